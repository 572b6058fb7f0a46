// Compile-fail cases of the LibTorch layer: a conversion that would lose
// tracking is refused with a message naming the fix.
#include <modtracker/torch.hpp>

namespace nn = modtracker::libtorch::nn;

void convert(nn::Sequential& tracked) {
#if defined(MODTRACKER_CASE_ok)
  torch::nn::Sequential plain(std::shared_ptr<torch::nn::SequentialImpl>(tracked.ptr()));  // explicitly
  nn::Sequential again(plain);                  // a tracked Sequential over the same children
  (void)again;
#elif defined(MODTRACKER_CASE_sequential_to_torch)
  torch::nn::Sequential plain = tracked;
  (void)plain;
#endif
}
