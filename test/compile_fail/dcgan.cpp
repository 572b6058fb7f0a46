// pytorch/examples' DCGAN style: `using namespace torch;` at file scope. The
// swap's alias `nn` then meets torch::nn: declared at file scope too, the
// first use is ambiguous (one error, in this file); declared in one's own
// namespace, it wins and compiles.
#include <torch/torch.h>
using namespace torch;

#include <modtracker/torch.hpp>

#if defined(MODTRACKER_CASE_ok)
namespace dcgan {
namespace nn = modtracker::libtorch::nn;
struct GeneratorImpl : nn::Module {
  nn::Sequential main{register_module("main", nn::Sequential(nn::Linear(4, 8), nn::ReLU(), nn::Linear(8, 2)))};
  Tensor forward(Tensor x) { return main->forward(x); }
};
MODTRACKER_MODULE(Generator);
}  // namespace dcgan
Tensor run(dcgan::Generator& g) { return g(torch::randn({1, 4})); }
#elif defined(MODTRACKER_CASE_alias_at_file_scope)
namespace nn = modtracker::libtorch::nn;
struct GeneratorImpl : nn::Module {
  nn::Linear fc{register_module("fc", nn::Linear(4, 2))};
  Tensor forward(Tensor x) { return fc(x); }
};
MODTRACKER_MODULE(Generator);
#endif
