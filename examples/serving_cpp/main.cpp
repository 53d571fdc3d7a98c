// Load a fusionrec export with libtorch alone and check it against the exporter's numbers.
//
//   serve_export FBGEMM_GPU_DIR EXPORT_DIR [ITERATIONS]
//
// 1. dlopen()s FBGEMM's operator libraries (what `import fbgemm_gpu` does in Python), so that
//    the torch.ops.fbgemm.* calls inside the TorchScript module resolve;
// 2. torch::jit::load(EXPORT_DIR/model.pt) and reads manifest.json from the archive itself;
// 3. runs model(*example_inputs) (EXPORT_DIR/example_inputs.pt, written by torch.save) and
//    prints the largest difference from EXPORT_DIR/example_outputs.pt and the mean latency.
#include <dlfcn.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <torch/script.h>
#include <torch/serialize.h>
#include <ATen/Parallel.h>

static std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " FBGEMM_GPU_DIR EXPORT_DIR [ITERATIONS]\n";
    return 2;
  }
  const std::string fbgemm_dir = argv[1], dir = argv[2];
  const int iterations = argc > 3 ? std::stoi(argv[3]) : 20;
  // The order fbgemm_gpu/__init__.py loads them in (fbgemm_gpu 1.8).
  const char* libraries[] = {
      "fbgemm_gpu_config", "fbgemm_gpu_tbe_utils", "fbgemm_gpu_tbe_index_select", "fbgemm_gpu_tbe_cache",
      "fbgemm_gpu_tbe_optimizers", "fbgemm_gpu_tbe_inference", "fbgemm_gpu_tbe_training_forward",
      "fbgemm_gpu_tbe_training_backward", "fbgemm_gpu_tbe_training_backward_pt2",
      "fbgemm_gpu_tbe_training_backward_dense", "fbgemm_gpu_tbe_training_backward_split_host",
      "fbgemm_gpu_tbe_training_backward_gwd", "fbgemm_gpu_tbe_training_backward_vbe", "fbgemm_gpu_py"};
  for (const char* name : libraries) {
    const std::string path = fbgemm_dir + "/" + name + ".so";
    if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
      std::cerr << "error: dlopen " << path << ": " << dlerror() << "\n";
      return 1;
    }
  }
  torch::NoGradGuard no_grad;
  at::set_num_threads(1);
  std::unordered_map<std::string, std::string> extra{{"manifest.json", ""}};
  auto t0 = std::chrono::steady_clock::now();
  torch::jit::Module model = torch::jit::load(dir + "/model.pt", torch::kCPU, extra);
  model.eval();
  const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  auto inputs_ivalue = torch::pickle_load(read_file(dir + "/example_inputs.pt"));
  std::vector<torch::jit::IValue> inputs;
  for (const auto& v : inputs_ivalue.toTupleRef().elements()) inputs.push_back(v);
  at::Tensor expected = torch::pickle_load(read_file(dir + "/example_outputs.pt")).toTensor();

  at::Tensor got = model.forward(inputs).toTensor();
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) model.forward(inputs);
  const double call_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iterations;
  const double diff = (got - expected).abs().max().item<double>();
  std::cout << "{\"manifest_bytes\": " << extra["manifest.json"].size() << ", \"inputs\": " << inputs.size()
            << ", \"output_shape\": [" << got.size(0) << ", " << got.size(1) << "], \"max_abs_diff\": " << diff
            << ", \"load_ms\": " << load_ms << ", \"mean_call_ms\": " << call_ms << "}" << std::endl;
  return diff <= 1e-6 ? 0 : 1;
}
