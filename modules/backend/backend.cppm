// import modtracker.backend; -- what someone writing a hook backend needs:
// the vocabulary, the HookBackend interface, forward dispatch and gradient
// hooks. A user of a tracker needs only `import modtracker;`.
export module modtracker.backend;
export import :values;
export import :registration;
export import :gradients;
export import :dispatch;
export import :hook_backend;
