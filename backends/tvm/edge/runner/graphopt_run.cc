// graphopt_run: run a graphopt TVM artifact (model.so) on the machine it was compiled for.
//
// Loads the exported Relax VM library, reads the inputs from .npy files (in the order of the
// model's inputs, as listed in metadata.json), calls "main" once, writes every output as
// output_<i>.npy and, with --repeat N, times N more calls and prints the median latency.
// It needs only the TVM runtime (libtvm_runtime.so + libtvm_ffi.so) and the tvm-ffi headers,
// so the same source builds natively on the device, with a cross g++, or for the host.

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr size_t kAlignment = 64;  // TVM kernels may assume 64-byte aligned buffers

const char* kUsage =
    "usage: graphopt_run MODEL.so [-o OUTPUT_DIR] [--repeat N] [--warmup N] [--threads N] "
    "INPUT0.npy [INPUT1.npy ...]\n"
    "  Inputs are given in the model's input order (metadata.json \"inputs\").\n"
    "  Outputs are written as OUTPUT_DIR/output_<i>.npy (default OUTPUT_DIR: .).\n"
    "  --repeat N   time N more calls of main and print the median latency in ms\n"
    "  --warmup N   untimed calls before timing (default 3)\n"
    "  --threads N  TVM worker threads (default: TVM_NUM_THREADS or all cores)\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- .npy files: the dtypes graphopt models use, little-endian, C order -----------------------

struct NpyType {
  const char* descr;
  DLDataType dtype;
};

const NpyType kNpyTypes[] = {
    {"<f4", {kDLFloat, 32, 1}}, {"<f8", {kDLFloat, 64, 1}}, {"<f2", {kDLFloat, 16, 1}},
    {"<i8", {kDLInt, 64, 1}},   {"<i4", {kDLInt, 32, 1}},   {"<i2", {kDLInt, 16, 1}},
    {"|i1", {kDLInt, 8, 1}},    {"|u1", {kDLUInt, 8, 1}},   {"<u2", {kDLUInt, 16, 1}},
    {"<u4", {kDLUInt, 32, 1}},  {"<u8", {kDLUInt, 64, 1}},  {"|b1", {kDLBool, 8, 1}},
};

const char* DescrOf(DLDataType dtype) {
  for (const NpyType& t : kNpyTypes) {
    if (t.dtype.code == dtype.code && t.dtype.bits == dtype.bits && t.dtype.lanes == dtype.lanes) return t.descr;
  }
  throw std::runtime_error("output dtype " + std::string(ffi::DLDataTypeToString(dtype)) +
                           " cannot be written as .npy by graphopt_run");
}

struct AlignedAlloc {
  void AllocData(DLTensor* tensor) {
    size_t bytes = std::max<size_t>(ffi::GetDataSize(*tensor), 1);
    bytes = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    tensor->data = std::aligned_alloc(kAlignment, bytes);
    if (tensor->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

// The value of 'key' in the header dict, e.g. "'<f4'" or "(1, 128)".
std::string HeaderField(const std::string& header, const std::string& key, const std::string& path) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw std::runtime_error(path + ": .npy header has no '" + key + "'");
  at = header.find(':', at) + 1;
  while (at < header.size() && header[at] == ' ') ++at;
  size_t end = header[at] == '(' ? header.find(')', at) + 1 : header.find_first_of(",}", at);
  return header.substr(at, end - at);
}

ffi::Tensor ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open input " + path);
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + " is not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  if (!in) throw std::runtime_error(path + ": truncated .npy header");

  std::string descr = HeaderField(header, "descr", path);
  descr = descr.substr(1, descr.size() - 2);  // strip the quotes
  if (descr == "<b1") descr = "|b1";
  if (descr == "<i1") descr = "|i1";
  if (descr == "<u1") descr = "|u1";
  const NpyType* type = nullptr;
  for (const NpyType& t : kNpyTypes) {
    if (descr == t.descr) type = &t;
  }
  if (type == nullptr) throw std::runtime_error(path + ": unsupported .npy dtype " + descr);
  if (HeaderField(header, "fortran_order", path) != "False") {
    throw std::runtime_error(path + ": Fortran-order arrays are not supported (save with np.ascontiguousarray)");
  }
  std::string shape_text = HeaderField(header, "shape", path);
  std::vector<int64_t> shape;
  std::stringstream dims(shape_text.substr(1, shape_text.size() - 2));
  for (std::string dim; std::getline(dims, dim, ',');) {
    if (dim.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(dim));
  }

  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                                type->dtype, DLDevice{kDLCPU, 0});
  size_t bytes = ffi::GetDataSize(tensor);
  in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(bytes));
  if (static_cast<size_t>(in.gcount()) != bytes) throw std::runtime_error(path + ": fewer data bytes than its shape needs");
  return tensor;
}

void WriteNpy(const std::string& path, const ffi::Tensor& tensor) {
  if (tensor.device().device_type != kDLCPU) throw std::runtime_error("output is not on the CPU");
  if (!tensor.IsContiguous()) throw std::runtime_error("output is not contiguous");
  std::string shape = "(";
  for (int i = 0; i < tensor.ndim(); ++i) shape += std::to_string(tensor.shape()[i]) + (tensor.ndim() == 1 ? "," : i + 1 < tensor.ndim() ? ", " : "");
  shape += ")";
  std::string header = "{'descr': '" + std::string(DescrOf(tensor.dtype())) + "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + header.size() + 1;  // magic(6) + version(2) + length(2) + header + '\n'
  header.append((kAlignment - total % kAlignment) % kAlignment, ' ');
  header.push_back('\n');

  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write " + path);
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t len = static_cast<uint16_t>(header.size());
  char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_bytes, 2);
  out << header;
  const char* data = static_cast<const char*>(tensor.data_ptr()) + tensor.byte_offset();
  out.write(data, static_cast<std::streamsize>(ffi::GetDataSize(tensor)));
  if (!out) throw std::runtime_error("cannot write " + path);
}

// ---- the model -----------------------------------------------------------------------------

struct Options {
  std::string model;
  std::string output_dir = ".";
  std::vector<std::string> inputs;
  int repeat = 0;
  int warmup = 3;
  int threads = 0;
};

int ParseCount(const std::string& flag, const char* value) {
  char* end = nullptr;
  long n = value ? std::strtol(value, &end, 10) : -1;
  if (!value || *end != '\0' || n < 0) throw UsageError(flag + " needs a non-negative integer");
  return static_cast<int>(n);
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    const char* next = i + 1 < argc ? argv[i + 1] : nullptr;
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "-o" || arg == "--output-dir") {
      if (!next) throw UsageError(arg + " needs a folder");
      opt.output_dir = next;
      ++i;
    } else if (arg == "--repeat" || arg == "--warmup" || arg == "--threads") {
      int n = ParseCount(arg, next);
      (arg == "--repeat" ? opt.repeat : arg == "--warmup" ? opt.warmup : opt.threads) = n;
      ++i;
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw UsageError("unknown option " + arg);
    } else if (opt.model.empty()) {
      opt.model = arg;
    } else {
      opt.inputs.push_back(arg);
    }
  }
  if (opt.model.empty()) throw UsageError("no model given");
  return opt;
}

ffi::Function RequiredFunction(const ffi::Module& module, const std::string& name, const std::string& what) {
  ffi::Optional<ffi::Function> f = module->GetFunction(name, true);
  if (!f.has_value()) throw std::runtime_error(what + " has no function '" + name + "'");
  return *f;
}

// The Relax VM of an exported library, initialised for the CPU with the pooled allocator.
ffi::Function LoadMain(const std::string& path) {
  // dlopen looks a bare "model.so" up on the library path, not in the current folder.
  ffi::Module library = ffi::Module::LoadFromFile(std::filesystem::absolute(path).string());
  ffi::Function load_executable = RequiredFunction(library, "vm_load_executable", path + " (not a Relax VM library?)");
  ffi::Module vm = load_executable().cast<ffi::Module>();
  constexpr int kPooledAllocator = 2;
  RequiredFunction(vm, "vm_initialization", "the VM")(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  return RequiredFunction(vm, "main", "the model");
}

std::vector<ffi::Tensor> Outputs(const ffi::Any& result) {
  if (auto tensor = result.as<ffi::Tensor>()) return {*tensor};
  std::vector<ffi::Tensor> outputs;
  if (auto tuple = result.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *tuple) {
      auto tensor = item.as<ffi::Tensor>();
      if (!tensor) throw std::runtime_error("main returned a nested tuple; graphopt_run writes only tensors");
      outputs.push_back(*tensor);
    }
    return outputs;
  }
  throw std::runtime_error("main returned " + std::string(result.GetTypeKey()) + ", not tensors");
}

double MedianMs(std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  size_t n = samples.size();
  return n % 2 ? samples[n / 2] : 0.5 * (samples[n / 2 - 1] + samples[n / 2]);
}

int Run(const Options& opt) {
  if (opt.threads > 0) {
    if (auto configure = ffi::Function::GetGlobal("runtime.config_threadpool")) (*configure)(0, opt.threads);
  }
  ffi::Function main_fn = LoadMain(opt.model);

  std::vector<ffi::Tensor> inputs;
  for (const std::string& path : opt.inputs) inputs.push_back(ReadNpy(path));
  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  auto call = [&]() {
    ffi::Any result;
    main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    return result;
  };

  std::vector<ffi::Tensor> outputs = Outputs(call());
  for (size_t i = 0; i < outputs.size(); ++i) {
    std::string path = (std::filesystem::path(opt.output_dir) / ("output_" + std::to_string(i) + ".npy")).string();
    WriteNpy(path, outputs[i]);
    std::cout << "output_" << i << " " << ffi::DLDataTypeToString(outputs[i].dtype()) << " -> " << path << "\n";
  }

  if (opt.repeat > 0) {
    for (int i = 0; i < opt.warmup; ++i) call();
    std::vector<double> samples;
    for (int i = 0; i < opt.repeat; ++i) {
      auto start = std::chrono::steady_clock::now();
      call();
      samples.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::printf("latency_ms median=%.4f min=%.4f max=%.4f runs=%d\n", MedianMs(samples),
                *std::min_element(samples.begin(), samples.end()),
                *std::max_element(samples.begin(), samples.end()), opt.repeat);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const UsageError& e) {
    std::cerr << "graphopt_run: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const ffi::Error& e) {
    std::cerr << "graphopt_run: " << e.kind() << ": " << e.message() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "graphopt_run: " << e.what() << "\n";
    return 1;
  }
}
