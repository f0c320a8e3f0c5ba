// The latency bench's open-loop client (services/bench/latency.py drives it): unary calls sent from C++
// at given times, whatever the answers, each timed from its start to its status. A Python client spends
// tens of microseconds of its one core per call and falls behind its own arrival times long before a
// native-front server stops answering; this one sends from one thread and collects from another.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Pending {
  size_t index = 0;
  int64_t began = 0;
  grpc::ClientContext context;
  grpc::ByteBuffer answer;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
};

// The last value of `key` in the call's trailing metadata, or "" if it has none.
std::string Trailer(const grpc::ClientContext& context, const std::string& key) {
  const auto [first, last] = context.GetServerTrailingMetadata().equal_range(key);
  if (first == last) return {};
  const grpc::string_ref value = std::prev(last)->second;
  return std::string(value.data(), value.size());
}

// Sends `requests` in turn to `method` at `target`, call i at `arrivals[i]` seconds after the channel is
// connected (or at once, if the client is behind), each with a deadline of `timeout_s` and `metadata`.
// Returns, one entry per call: how many ns after its arrival time it was started, how many ns from its
// start to its status, that status's code (three arrays), and the last value of the trailing metadata
// `trailer` (a list of bytes; empty where the call had none, all empty if `trailer` is "").
py::tuple run(const std::string& target, const std::string& method, const std::vector<std::string>& requests,
              py::array_t<double, py::array::c_style | py::array::forcecast> arrivals, double timeout_s,
              double connect_timeout_s, const std::vector<std::pair<std::string, std::string>>& metadata,
              const std::string& trailer) {
  if (requests.empty()) throw std::invalid_argument("no requests to send");
  if (timeout_s <= 0 || connect_timeout_s <= 0) throw std::invalid_argument("timeouts must be positive");
  std::vector<grpc::ByteBuffer> buffers;
  buffers.reserve(requests.size());
  for (const auto& request : requests) {
    grpc::Slice slice(request);
    buffers.emplace_back(&slice, 1);
  }
  const auto due = arrivals.unchecked<1>();
  const size_t count = static_cast<size_t>(due.shape(0));
  std::vector<int64_t> due_ns(count);
  for (size_t i = 0; i < count; ++i) {
    if (!(due(i) >= 0) || (i > 0 && due(i) < due(i - 1)))
      throw std::invalid_argument("arrival times must be non-negative and in order");
    due_ns[i] = static_cast<int64_t>(due(i) * 1e9);
  }
  const std::vector<py::ssize_t> shape = {static_cast<py::ssize_t>(count)};
  py::array_t<int64_t> lag(shape), elapsed(shape);
  py::array_t<int32_t> codes(shape);
  int64_t* lag_out = lag.mutable_data();
  int64_t* elapsed_out = elapsed.mutable_data();
  int32_t* code_out = codes.mutable_data();
  std::vector<std::string> trailers(count);
  const auto timeout = std::chrono::nanoseconds(static_cast<int64_t>(timeout_s * 1e9));
  {
    py::gil_scoped_release release;
    auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    const auto connect_by =
        std::chrono::system_clock::now() + std::chrono::nanoseconds(static_cast<int64_t>(connect_timeout_s * 1e9));
    if (!channel->WaitForConnected(connect_by)) throw std::runtime_error("could not connect to " + target);
    grpc::GenericStub stub(channel);
    grpc::CompletionQueue queue;
    std::thread collector([&] {
      void* tag = nullptr;
      bool ok = false;
      for (size_t done = 0; done < count && queue.Next(&tag, &ok); ++done) {
        const int64_t ended = now_ns();
        std::unique_ptr<Pending> pending(static_cast<Pending*>(tag));
        elapsed_out[pending->index] = ended - pending->began;
        code_out[pending->index] = static_cast<int32_t>(pending->status.error_code());
        if (!trailer.empty()) trailers[pending->index] = Trailer(pending->context, trailer);
      }
    });
    const int64_t start = now_ns();
    for (size_t i = 0; i < count; ++i) {
      const int64_t at = start + due_ns[i];
      if (now_ns() < at) std::this_thread::sleep_for(std::chrono::nanoseconds(at - now_ns()));
      auto pending = std::make_unique<Pending>();
      pending->index = i;
      pending->context.set_deadline(std::chrono::system_clock::now() + timeout);
      for (const auto& [key, value] : metadata) pending->context.AddMetadata(key, value);
      pending->began = now_ns();
      lag_out[i] = std::max<int64_t>(0, pending->began - at);
      pending->reader = stub.PrepareUnaryCall(&pending->context, method, buffers[i % buffers.size()], &queue);
      pending->reader->StartCall();
      Pending* raw = pending.release();
      raw->reader->Finish(&raw->answer, &raw->status, raw);
    }
    collector.join();
    queue.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (queue.Next(&tag, &ok)) {
    }
  }
  py::list values;
  for (const auto& value : trailers) values.append(py::bytes(value));
  return py::make_tuple(lag, elapsed, codes, values);
}

}  // namespace

PYBIND11_MODULE(_openloop, module) {
  module.doc() = "The latency bench's open-loop gRPC client (services/bench/native/openloop.cc).";
  module.def("run", &run, py::arg("target"), py::arg("method"), py::arg("requests"), py::arg("arrivals"),
             py::arg("timeout_s"), py::arg("connect_timeout_s"),
             py::arg("metadata") = std::vector<std::pair<std::string, std::string>>{}, py::arg("trailer") = "",
             "Send requests at the given arrival times (seconds) with metadata; returns (lag ns, elapsed ns, "
             "status code, the trailing metadata `trailer`'s last value per call).");
}
