// import modtracker; -- which torch::nn module is running now, in forward
// and in backward. Framework-neutral: backends plug in through HookBackend.
export module modtracker;
export import :backend;
export import :dispatch;
export import :generator;
export import :core;
export import :tracker;
export import :stats;
