// import modtracker; -- which module is running now, in forward and in
// backward: what a user of PyTorch's ModTracker knows (parents, is_bw,
// known_fqn, the four user hooks, a tracking scope, the transitions). The
// engine is not exported; backends are written against modtracker.backend,
// tools (tables, traces) live in modtracker.stats.
export module modtracker;
import modtracker.backend;
export import :generator;
export import :transitions;
export import :hooks;
export import :tracker;

// The shared vocabulary a tracker's user meets in transitions, walks and listeners.
export namespace modtracker {
using modtracker::Kind;
using modtracker::ModuleRef;
using modtracker::Phase;
using modtracker::Registration;
}  // namespace modtracker
