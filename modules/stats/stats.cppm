// import modtracker.stats; -- tools built on the transitions a tracker
// yields: spans matched from enter/exit pairs, per-module tables, Chrome /
// Perfetto traces, ranks merged, an HTML report. Framework-neutral; the tracker does not know them.
export module modtracker.stats;
export import :spans;
export import :format;
export import :statistics;
export import :trace;
export import :ranks;
export import :report;
