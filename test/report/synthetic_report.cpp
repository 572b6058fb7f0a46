// Writes the report of a synthetic model of about N modules (stages of
// blocks of layers, values spread unevenly), for the browser's large-page
// check and its load-time figure: modtracker-synthetic-report N PATH.
#include <cstdint>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

import modtracker.stats;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s MODULES PATH\n", argv[0]);
    return 2;
  }
  const long wanted = std::strtol(argv[1], nullptr, 10);
  modtracker::Statistics stats;
  // A root, 10 stages (lists: never called) of 10 blocks, each block the
  // same number of layers: at least `wanted` modules in all.
  const long per_block = wanted > 211 ? (wanted - 111 + 99) / 100 : 1;
  std::uint64_t seed = 42;
  const auto next = [&seed] { return (seed = seed * 6364136223846793005ULL + 1442695040888963407ULL) >> 33; };
  using ns = std::chrono::nanoseconds;
  auto& root = stats.at("Model");
  root.fw_calls = root.bw_calls = 1;
  for (int s = 0; s < 10; ++s)
    for (int b = 0; b < 10; ++b) {
      stats.at("Model.stages." + std::to_string(s));
      const std::string block = "Model.stages." + std::to_string(s) + "." + std::to_string(b);
      auto& br = stats.at(block);
      br.fw_calls = br.bw_calls = 1;
      for (long l = 0; l < per_block; ++l) {
        auto& r = stats.at(block + ".layers." + std::to_string(l));
        r.fw_calls = r.bw_calls = 1;
        const auto work = 1 + next() % 1000 * (l % 7 == 0 ? 20 : 1);
        r.fw_inclusive = r.fw_exclusive = ns(work * 100);  // the parents' own time is left at zero
        r.bw_inclusive = r.bw_exclusive = ns(work * 210);
        r.params_trainable = work * 64;
        r.bytes_trainable = r.params_trainable * 4;
        r.fw_flops = work * 1000;
        r.bw_flops = work * 2000;
        r.fw_kept_bytes = work * 256;
        r.fw_peak_bytes = work * 300;
        r.bw_peak_bytes = work * 200;
        r.output_shape = "[8, " + std::to_string(work) + "]";
        for (auto* up : {&br, &root}) {
          up->fw_inclusive += r.fw_inclusive;
          up->bw_inclusive += r.bw_inclusive;
          up->params_trainable += r.params_trainable;
          up->bytes_trainable += r.bytes_trainable;
          up->fw_flops = up->fw_flops.value_or(0) + *r.fw_flops;
          up->bw_flops = up->bw_flops.value_or(0) + *r.bw_flops;
          up->fw_kept_bytes = up->fw_kept_bytes.value_or(0) + *r.fw_kept_bytes;
          up->fw_peak_bytes = std::max(up->fw_peak_bytes.value_or(0), *r.fw_peak_bytes);
          up->bw_peak_bytes = std::max(up->bw_peak_bytes.value_or(0), *r.bw_peak_bytes);
        }
      }
    }
  const std::filesystem::path path(argv[2]);
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path);
  modtracker::write_report(out, stats, {.title = "synthetic model", .subtitle = std::to_string(stats.rows().size()) + " modules"});
  return out ? 0 : 1;
}
