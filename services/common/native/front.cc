// The native gRPC front of a model service (services/common/front.py drives it; docs/native-front.md).
//
// A C++ server owns the service's public port. ModelInfer calls for a registered model version that
// carry nothing but raw tensors of the registered shapes queue here, and a Python thread per route
// takes them a batch at a time (`take`), runs the model once and answers them all (`reply`): Python is
// entered once per batch. Every other call, and every ModelInfer that is not that simple, is proxied
// byte for byte to the service's Python server on a loopback port, so its answers, errors included,
// are the Python server's own.

#include <grpc/grpc.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "maas/inference/grpc_service.pb.h"

namespace py = pybind11;

namespace {

constexpr char kInferMethod[] = "/inference.GRPCInferenceService/ModelInfer";
constexpr char kRequestIdKey[] = "x-request-id";
constexpr char kTimingKey[] = "maas-timing";
// The `maas-timing` entry of a call that did not ask for one.
const std::string kNoTiming;
// Request parameters maas never reads: Triton's clients (perf_analyzer among them) send this one, which
// matters only to decoupled models' streams.
constexpr char kIgnoredParameter[] = "triton_enable_empty_final_response";
// A route with a latency target that has run nothing for this long admits a request whatever its cost fit
// says, so that the fit sees the machine again (as the Python batcher's PROBE_NS).
constexpr int64_t kProbeNs = 500'000'000;
constexpr int64_t kMinRetryNs = 10'000'000;
// A route with a latency target admits a call only if it would be finished (answered or refused) the
// `kWriteQuantile` quantile of its last `kWrites` calls' write times before the target: the time from
// finishing a call to gRPC having written it, which the caller waits for too and which grows with load (a
// batch's answers are written one after another, on the cores that run the model). The quantile is taken
// again every `kWritesPerUpdate` calls.
constexpr size_t kWrites = 256;
constexpr size_t kWritesPerUpdate = 32;
constexpr double kWriteQuantile = 0.95;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct TensorSpec {
  std::string name;
  std::string datatype;
  std::vector<int64_t> dims;  // without the batch dimension
  size_t row_bytes = 0;
};

size_t item_size(const std::string& datatype) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"UINT8", 1}, {"INT8", 1},  {"UINT16", 2}, {"INT16", 2}, {"FP16", 2}, {"BF16", 2},
      {"UINT32", 4}, {"INT32", 4}, {"FP32", 4}, {"UINT64", 8}, {"INT64", 8}, {"FP64", 8}};
  auto found = sizes.find(datatype);
  if (found == sizes.end()) throw std::invalid_argument("no fixed-size datatype " + datatype);
  return found->second;
}

// gRPC's threads (reading, parsing, admitting and finishing calls) run as SCHED_BATCH: a thread woken by
// a call's bytes then never preempts a pump running a batch on the same core, and takes what has arrived
// together when the batch ends or its time slice comes, at the same share of the CPU (docs/design.md,
// "Tenth pass"). A pump thread, which gRPC could in principle borrow for a reaction, never switches; nor
// does a thread under another policy than the default, or one that may not change it.
thread_local bool pump_thread = false;

void YieldToPumps() {
  thread_local bool decided = false;
  if (decided) return;
  decided = true;
  if (pump_thread || sched_getscheduler(0) != SCHED_OTHER) return;
  sched_param param{};
  sched_setscheduler(0, SCHED_BATCH, &param);
}

class Call;

struct Route {
  std::string model;
  std::string version;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  int64_t max_rows = 0;
  size_t queue_limit = 0;
  std::mutex mu;
  std::condition_variable ready;
  std::deque<Call*> queue;
  bool closed = false;
  uint64_t cancelled = 0;
  uint64_t expired = 0;
  uint64_t full = 0;  // refused for a full queue
  // The latency target (0: none), and the batch cost the pump last fitted: a batch of r rows takes
  // about fixed_ns + per_row_ns * r, a plan for the queue adds margin_ns once, and admission forgives
  // forgiven_ns of it (the pump's steer).
  int64_t target_ns = 0;
  bool costed = false;
  double fixed_ns = 0, per_row_ns = 0, margin_ns = 0, forgiven_ns = 0;
  bool running = false;
  int64_t running_started_ns = 0, running_rows = 0, free_ns = 0, queued_rows = 0;
  uint64_t shed = 0;
  // The write times of the last `kWrites` calls finished here (a ring; `written`: calls recorded in all) and
  // their quantile, and how many calls answered were written after the target and within it since the pump
  // last looked; `writes_mu`, not `mu`, guards them, since a call may be done while its finisher holds `mu`.
  // A write ends at the call's OnDone, which a busy executor may run late: the estimate errs long, and the
  // steer, which forgives what admission adds, takes back what it overstates.
  std::mutex writes_mu;
  std::vector<int64_t> writes = std::vector<int64_t>(kWrites, 0);
  size_t written = 0;
  std::atomic<int64_t> write_ns{0};
  uint64_t late = 0, in_time = 0;

  // A call finished here was written `ns` after it was finished; `answered_ns`, for an answer, is its time
  // from arrival to written (-1 for a refusal).
  void Wrote(int64_t ns, int64_t answered_ns) {
    std::lock_guard<std::mutex> lock(writes_mu);
    if (answered_ns >= 0) ++(answered_ns > target_ns ? late : in_time);
    writes[written++ % kWrites] = ns;
    if (written % kWritesPerUpdate != 1) return;
    std::vector<int64_t> recent(writes.begin(), writes.begin() + static_cast<std::ptrdiff_t>(std::min(written, kWrites)));
    // The quantile's rank as BatchCost's margin takes it: ceil(q * n) - 1.
    auto rank = static_cast<std::ptrdiff_t>(std::ceil(kWriteQuantile * static_cast<double>(recent.size()))) - 1;
    auto at = recent.begin() + rank;
    std::nth_element(recent.begin(), at, recent.end());
    write_ns.store(*at, std::memory_order_relaxed);
  }
  // When a call that arrived at `arrived` must be finished here to meet the target.
  double FinishBy(int64_t arrived) const {
    return static_cast<double>(arrived + target_ns - write_ns.load(std::memory_order_relaxed));
  }

  // The queue and its rows change only here (with `mu` held), so that queued_rows stays their sum.
  void Push(Call* call, int64_t rows) {
    queue.push_back(call);
    queued_rows += rows;
  }
  std::deque<Call*>::iterator Remove(std::deque<Call*>::iterator at, int64_t rows) {
    queued_rows -= rows;
    return queue.erase(at);
  }
  void Clear() {
    queue.clear();
    queued_rows = 0;
  }
  // Take the calls at `at` (positions in the queue, in order) out of it.
  std::vector<Call*> Detach(const std::vector<size_t>& at);

  double Predict(int64_t rows) const { return fixed_ns + per_row_ns * static_cast<double>(rows); }
  // How long the batch running now and the queued rows with `more` take, in full batches.
  double Ahead(int64_t now, int64_t more) const {
    double left = running ? std::max(0.0, static_cast<double>(running_started_ns) + Predict(running_rows) - now) : 0;
    int64_t rows = queued_rows + more;
    double batches = std::ceil(static_cast<double>(rows) / static_cast<double>(max_rows));
    return left + batches * fixed_ns + per_row_ns * static_cast<double>(rows) + margin_ns;
  }
};

// Calls taken together; one that is dropped unanswered hands its calls to the Python server.
struct Batch {
  Route* route = nullptr;
  std::vector<Call*> calls;
  bool settled = false;
  ~Batch();
};

class Front;

// One call on the public port: a ModelInfer answered here, or a proxy to the Python server.
class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(Front* front, grpc::GenericCallbackServerContext* ctx);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // Answer this queued call with `response` (its trailing x-request-id added, and `timing`, its
  // `maas-timing` entry, if not empty).
  void Answer(grpc::ByteBuffer&& response, const std::string& timing);
  void Fail(grpc::StatusCode code, const std::string& details);
  // Hand this queued call to the Python server instead.
  void Proxy();
  // Refuse this call for the route's latency target: RESOURCE_EXHAUSTED with a RetryInfo of `retry_ns`
  // (counted in the route's `shed`; call with its lock held).
  void Shed(Route& route, double retry_ns, bool queued);
  // Refuse this call: RESOURCE_EXHAUSTED with `message` and a RetryInfo of `retry_ns` (at least 10 ms);
  // `queued`: it was in a route's queue.
  void Refuse(const char* message, double retry_ns, bool queued);

  bool Expired(std::chrono::system_clock::time_point now) const { return ctx_->deadline() <= now; }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  const inference::ModelInferRequest& request() const { return request_; }
  int64_t rows = 0;
  int64_t arrived_ns = 0;
  int64_t finished_ns = 0;  // when its route answered or refused it (0: neither)
  bool timing = false;      // the caller asked for `maas-timing`
  bool answered = false;
  Route* route = nullptr;   // the route it asked for
  bool probe = false;  // admitted by an idle route whatever its fit said: never shed
  std::vector<int> input_order;  // request input index of each registered input

 private:
  class Upstream : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    explicit Upstream(Call* call) : call_(call) {}
    void OnWriteDone(bool ok) override { call_->UpstreamWriteDone(ok); }
    void OnReadDone(bool ok) override { call_->UpstreamReadDone(ok); }
    void OnWritesDoneDone(bool) override {}
    void OnDone(const grpc::Status& status) override { call_->UpstreamDone(status); }

   private:
    Call* call_;
  };

  void StartProxy(bool have_message);
  void UpstreamWriteDone(bool ok);
  void UpstreamReadDone(bool ok);
  void UpstreamDone(const grpc::Status& status);
  void PassInitialMetadata();
  void ReleaseWriteHold();
  void Release();
  bool Fast();

  Front* front_;
  grpc::GenericCallbackServerContext* ctx_;
  grpc::ByteBuffer in_;
  grpc::ByteBuffer out_;
  grpc::ByteBuffer down_;
  inference::ModelInferRequest request_;
  std::string request_id_;
  std::atomic<bool> cancelled_{false};

  std::recursive_mutex mu_;
  bool proxying_ = false;
  bool write_hold_ = false;
  bool initial_metadata_sent_ = false;
  bool upstream_closed_ = false;  // the upstream call has its status: it may be done at any moment
  int holds_ = 1;
  std::unique_ptr<grpc::ClientContext> upstream_ctx_;
  Upstream upstream_{this};
};

class Service : public grpc::CallbackGenericService {
 public:
  explicit Service(Front* front) : front_(front) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    YieldToPumps();
    return new Call(front_, ctx);
  }

 private:
  Front* front_;
};

// The server on the public port, the channel to the Python server, and the registered routes.
class Front {
 public:
  Front(const std::string& address, const std::string& upstream, int max_message_bytes,
        int64_t max_connection_age_ms, int64_t max_connection_age_grace_ms, int max_streams,
        const std::string& id_prefix)
      : id_prefix_(id_prefix), service_(this) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
    channel_ = grpc::CreateCustomChannel(upstream, grpc::InsecureChannelCredentials(), args);
    stub_ = std::make_unique<grpc::GenericStub>(channel_);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
    builder.RegisterCallbackGenericService(&service_);
    builder.SetMaxReceiveMessageSize(max_message_bytes);
    builder.SetMaxSendMessageSize(max_message_bytes);
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, max_streams);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
    if (max_connection_age_ms > 0) {
      builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, static_cast<int>(max_connection_age_ms));
      builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                                 static_cast<int>(max_connection_age_grace_ms));
    }
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) throw std::runtime_error("native front: could not bind " + address);
  }

  ~Front() { Shutdown(0); }

  int port() const { return port_; }

  // One route (one queue, one pump) for a loaded model version, under every version name in `versions` that
  // asks for it (its own, and "" for the default).
  int Register(const std::string& model, const std::vector<std::string>& versions,
               const std::vector<py::tuple>& inputs, const std::vector<py::tuple>& outputs, int64_t max_rows,
               size_t queue_limit, int64_t target_ns) {
    if (versions.empty()) throw std::invalid_argument("a route needs a version");
    if (max_rows < 1) throw std::invalid_argument("a route needs a batch of at least one row");
    auto route = std::make_unique<Route>();
    route->model = model;
    route->version = versions.front();
    route->max_rows = max_rows;
    route->queue_limit = queue_limit;
    route->target_ns = target_ns;
    for (auto* specs : {&inputs, &outputs}) {
      for (const auto& spec : *specs) {
        TensorSpec tensor;
        tensor.name = spec[0].cast<std::string>();
        tensor.datatype = spec[1].cast<std::string>();
        tensor.dims = spec[2].cast<std::vector<int64_t>>();
        tensor.row_bytes = item_size(tensor.datatype);
        for (int64_t dim : tensor.dims) {
          if (dim < 0) throw std::invalid_argument("tensor " + tensor.name + " has a variable dimension");
          tensor.row_bytes *= static_cast<size_t>(dim);
        }
        (specs == &inputs ? route->inputs : route->outputs).push_back(std::move(tensor));
      }
    }
    std::lock_guard<std::mutex> lock(routes_mu_);
    routes_.push_back(std::move(route));
    for (const auto& version : versions) by_name_[{model, version}] = routes_.back().get();
    routed_.store(true);
    return static_cast<int>(routes_.size() - 1);
  }

  Route* Match(const std::string& model, const std::string& version) {
    std::lock_guard<std::mutex> lock(routes_mu_);
    auto found = by_name_.find({model, version});
    return found == by_name_.end() ? nullptr : found->second;
  }

  Route* route(int handle) {
    std::lock_guard<std::mutex> lock(routes_mu_);
    return routes_.at(static_cast<size_t>(handle)).get();
  }

  // Stop accepting calls and let those in flight finish for up to `grace_s` seconds, then close the
  // routes (their pumps' `take` returns None) and fail the calls still queued with UNAVAILABLE: the
  // server's shutdown waits for every call to finish, and a queued one is finished only by its pump.
  void Shutdown(double grace_s) {
    std::unique_ptr<grpc::Server> server;
    {
      std::lock_guard<std::mutex> lock(routes_mu_);
      server = std::move(server_);
    }
    auto deadline = std::chrono::system_clock::now() + std::chrono::microseconds(static_cast<int64_t>(grace_s * 1e6));
    std::thread stopping;
    if (server) stopping = std::thread([&server, deadline] { server->Shutdown(deadline); });
    while (in_flight_.load() > 0 && std::chrono::system_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    Close();
    if (server) {
      stopping.join();
      server->Wait();
    }
  }

  std::string NextRequestId() {
    char counter[17];
    snprintf(counter, sizeof(counter), "%016llx", static_cast<unsigned long long>(++request_counter_));
    return id_prefix_ + counter;
  }

  grpc::GenericStub* stub() { return stub_.get(); }

  // Close every route: its pump's `take` returns None, and the calls still queued are failed.
  void Close() {
    std::lock_guard<std::mutex> lock(routes_mu_);
    for (auto& route : routes_) {
      std::lock_guard<std::mutex> route_lock(route->mu);
      route->closed = true;
      for (Call* call : route->queue) call->Fail(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
      route->Clear();
      route->ready.notify_all();
    }
  }

  // From now on every call goes to the Python server (which refuses new ones while it drains); calls
  // queued here are still answered here.
  void Drain() { draining_.store(true); }
  bool draining() const { return draining_.load(); }
  // Whether any route is registered: with none, a ModelInfer is proxied without being parsed here.
  bool routed() const { return routed_.load(); }
  // Calls queued or being answered here.
  int64_t in_flight() const { return in_flight_.load(); }
  void Enter() { in_flight_.fetch_add(1); }
  void Leave() { in_flight_.fetch_sub(1); }

 private:
  std::string id_prefix_;
  std::atomic<uint64_t> request_counter_{0};
  std::atomic<bool> draining_{false};
  std::atomic<bool> routed_{false};
  std::atomic<int64_t> in_flight_{0};
  Service service_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> stub_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::mutex routes_mu_;
  std::vector<std::unique_ptr<Route>> routes_;
  std::map<std::pair<std::string, std::string>, Route*> by_name_;
};

bool SaneRequestId(grpc::string_ref value) {
  if (value.size() < 1 || value.size() > 128) return false;
  for (char c : value) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == ':' || c == '-')) return false;
  }
  return true;
}

Call::Call(Front* front, grpc::GenericCallbackServerContext* ctx) : front_(front), ctx_(ctx) {
  arrived_ns = now_ns();
  // With API keys or tracing on, the front has no routes: every call goes to the Python server.
  if (ctx_->method() != kInferMethod || !front_->routed() || front_->draining()) {
    StartProxy(false);
    return;
  }
  for (const auto& [key, value] : ctx_->client_metadata()) {
    if (key == kRequestIdKey) {
      if (SaneRequestId(value)) request_id_.assign(value.data(), value.size());
    } else if (key == kTimingKey) {
      timing = value == "1" || value == "true";
    }
  }
  StartRead(&in_);
}

bool Call::Fast() {
  if (front_->draining()) return false;
  grpc::ProtoBufferReader reader(&in_);
  if (!request_.ParseFromZeroCopyStream(&reader)) return false;
  const auto& request = request_;
  for (const auto& [key, value] : request.parameters()) {
    if (key != kIgnoredParameter || value.parameter_choice_case() == inference::InferParameter::PARAMETER_CHOICE_NOT_SET)
      return false;
  }
  if (request.raw_input_contents_size() != request.inputs_size()) return false;
  Route* route = front_->Match(request.model_name(), request.model_version());
  if (route == nullptr || request.inputs_size() != static_cast<int>(route->inputs.size())) return false;
  if (request.outputs_size() != 0) {
    if (request.outputs_size() != static_cast<int>(route->outputs.size())) return false;
    for (int i = 0; i < request.outputs_size(); ++i) {
      if (request.outputs(i).name() != route->outputs[static_cast<size_t>(i)].name ||
          request.outputs(i).parameters_size() != 0)
        return false;
    }
  }
  int64_t rows = -1;
  input_order.assign(route->inputs.size(), -1);
  for (int i = 0; i < request.inputs_size(); ++i) {
    const auto& input = request.inputs(i);
    if (input.parameters_size() != 0 || input.has_contents()) return false;
    size_t slot = 0;
    while (slot < route->inputs.size() && route->inputs[slot].name != input.name()) ++slot;
    if (slot == route->inputs.size() || input_order[slot] != -1) return false;
    const TensorSpec& spec = route->inputs[slot];
    if (input.datatype() != spec.datatype || input.shape_size() != static_cast<int>(spec.dims.size()) + 1) return false;
    for (size_t d = 0; d < spec.dims.size(); ++d) {
      if (input.shape(static_cast<int>(d) + 1) != spec.dims[d]) return false;
    }
    int64_t input_rows = input.shape(0);
    if (input_rows < 1 || input_rows > route->max_rows || (rows != -1 && input_rows != rows)) return false;
    rows = input_rows;
    if (request.raw_input_contents(i).size() != static_cast<size_t>(rows) * spec.row_bytes) return false;
    input_order[slot] = i;
  }
  this->rows = rows;
  this->route = route;
  std::lock_guard<std::mutex> lock(route->mu);
  if (route->closed) return false;
  if (request_id_.empty()) request_id_ = front_->NextRequestId();
  if (route->queue.size() >= route->queue_limit) {
    // As the Python batcher's admission: refused here, not handed to the slower Python server.
    ++route->full;
    char message[256];
    snprintf(message, sizeof(message), "model '%s' has %zu requests queued, its limit; retry shortly",
             route->model.c_str(), route->queue.size());
    Refuse(message, route->costed ? route->Ahead(now_ns(), 0) : 0, false);
    return true;
  }
  if (route->target_ns > 0 && route->costed) {
    // As the Python batcher's admission: an idle route runs a request at once, so it refuses one only if
    // the request alone would be late; a busy one if the batch running and the queue ahead make it late.
    int64_t now = now_ns();
    bool idle = !route->running && route->queue.empty();
    probe = idle && now - route->free_ns > kProbeNs;
    double ahead = idle ? route->Predict(rows) : route->Ahead(now, rows);
    if (!probe && now + ahead - route->forgiven_ns > route->FinishBy(arrived_ns)) {
      Shed(*route, ahead, false);
      return true;
    }
  }
  front_->Enter();
  route->Push(this, rows);
  route->ready.notify_one();
  return true;
}

// The upstream call's holds keep it from finishing while this side may still act on it from outside its
// reactions: one until the caller's messages are all passed up (`ReleaseWriteHold`), and one while each
// response message is being written to the caller.
void Call::OnReadDone(bool ok) {
  YieldToPumps();
  std::unique_lock<std::recursive_mutex> lock(mu_);
  if (proxying_) {
    if (upstream_closed_) return;
    if (ok) {
      upstream_.StartWrite(&in_);
    } else {
      upstream_.StartWritesDone();
      ReleaseWriteHold();
    }
    return;
  }
  lock.unlock();
  if (!ok) {
    StartProxy(false);
    return;
  }
  if (!Fast()) StartProxy(true);
}

void Call::ReleaseWriteHold() {
  if (write_hold_) {
    write_hold_ = false;
    upstream_.RemoveHold();
  }
}

void Call::StartProxy(bool have_message) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  proxying_ = true;
  ++holds_;
  upstream_ctx_ = std::make_unique<grpc::ClientContext>();
  for (const auto& [key, value] : ctx_->client_metadata()) {
    if (key.starts_with("grpc-") || key == "user-agent" || key == "content-type" || key == "te") continue;
    upstream_ctx_->AddMetadata(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
  }
  upstream_ctx_->set_deadline(ctx_->deadline());
  if (cancelled_.load()) upstream_ctx_->TryCancel();
  front_->stub()->PrepareBidiStreamingCall(upstream_ctx_.get(), std::string(ctx_->method()), grpc::StubOptions(),
                                           &upstream_);
  write_hold_ = true;
  upstream_.AddHold();
  upstream_.StartRead(&down_);
  if (have_message) {
    upstream_.StartWrite(&in_);
  } else {
    StartRead(&in_);
  }
  upstream_.StartCall();
}

void Call::UpstreamWriteDone(bool ok) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (upstream_closed_) return;
  if (ok) {
    StartRead(&in_);
  } else {
    ReleaseWriteHold();
  }
}

void Call::PassInitialMetadata() {
  if (initial_metadata_sent_) return;
  initial_metadata_sent_ = true;
  for (const auto& [key, value] : upstream_ctx_->GetServerInitialMetadata()) {
    ctx_->AddInitialMetadata(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
  }
}

// The end of the upstream responses: the call's status is there, so the write hold goes (the caller
// need not send or half-close for it to be passed on) and nothing more is written up.
void Call::UpstreamReadDone(bool ok) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!ok) {
    upstream_closed_ = true;
    ReleaseWriteHold();
    return;
  }
  upstream_.AddHold();
  PassInitialMetadata();
  StartWrite(&down_);
}

void Call::OnWriteDone(bool ok) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!proxying_) return;
  if (ok) {
    upstream_.StartRead(&down_);
  } else {
    upstream_ctx_->TryCancel();
  }
  upstream_.RemoveHold();
}

void Call::UpstreamDone(const grpc::Status& status) {
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    PassInitialMetadata();
    for (const auto& [key, value] : upstream_ctx_->GetServerTrailingMetadata()) {
      if (key == "grpc-status-details-bin") continue;
      ctx_->AddTrailingMetadata(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
    }
  }
  Finish(status);
  Release();
}

void Call::OnCancel() {
  cancelled_.store(true);
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (proxying_ && upstream_ctx_) upstream_ctx_->TryCancel();
}

void Call::OnDone() {
  YieldToPumps();
  if (finished_ns != 0 && route->target_ns > 0) {
    int64_t now = now_ns();
    route->Wrote(now - finished_ns, answered ? now - arrived_ns : -1);
  }
  Release();
}

void Call::Release() {
  bool last;
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    last = --holds_ == 0;
  }
  if (last) delete this;
}

// Each of these three ends a queued call's time here; the call may be gone as soon as its last
// operation starts, so it leaves the front's count first.
void Call::Answer(grpc::ByteBuffer&& response, const std::string& timing) {
  front_->Leave();
  finished_ns = now_ns();
  answered = true;
  out_ = std::move(response);
  ctx_->AddTrailingMetadata(kRequestIdKey, request_id_);
  if (!timing.empty()) ctx_->AddTrailingMetadata(kTimingKey, timing);
  StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
}

void Call::Fail(grpc::StatusCode code, const std::string& details) {
  front_->Leave();
  ctx_->AddTrailingMetadata(kRequestIdKey, request_id_);
  Finish(grpc::Status(code, details));
}

void Call::Proxy() {
  front_->Leave();
  StartProxy(true);
}

// A varint, and a length-delimited field, of the protobuf wire format.
void PutVarint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>(value | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void PutBytes(std::string& out, int field, const std::string& bytes) {
  PutVarint(out, static_cast<uint64_t>(field) << 3 | 2);
  PutVarint(out, bytes.size());
  out += bytes;
}

// A serialized google.rpc.Status of `code` and `message` with one google.rpc.RetryInfo of `retry_ns`: what
// the Python server sends in grpc-status-details-bin for a refusal that names a retry delay.
std::string RetryStatus(grpc::StatusCode code, const std::string& message, int64_t retry_ns) {
  std::string duration, retry, any, status;
  if (retry_ns / 1'000'000'000 != 0) {
    PutVarint(duration, 1 << 3);
    PutVarint(duration, static_cast<uint64_t>(retry_ns / 1'000'000'000));
  }
  if (retry_ns % 1'000'000'000 != 0) {
    PutVarint(duration, 2 << 3);
    PutVarint(duration, static_cast<uint64_t>(retry_ns % 1'000'000'000));
  }
  PutBytes(retry, 1, duration);
  PutBytes(any, 1, "type.googleapis.com/google.rpc.RetryInfo");
  PutBytes(any, 2, retry);
  PutVarint(status, 1 << 3);
  PutVarint(status, static_cast<uint64_t>(code));
  PutBytes(status, 2, message);
  PutBytes(status, 3, any);
  return status;
}

void Call::Shed(Route& route, double retry_ns, bool queued) {
  ++route.shed;
  char message[256];
  snprintf(message, sizeof(message),
           "model '%s' cannot answer within its %g ms target now (%zu requests queued); retry shortly",
           route.model.c_str(), static_cast<double>(route.target_ns) / 1e6, route.queue.size());
  Refuse(message, retry_ns, queued);
}

void Call::Refuse(const char* message, double retry_ns, bool queued) {
  // As Python's round(seconds, 3): the delay in whole milliseconds.
  double ms = std::isfinite(retry_ns) ? std::min(retry_ns / 1e6, 3.6e6) : 3.6e6;
  int64_t delay = std::max(kMinRetryNs, static_cast<int64_t>(std::llround(ms)) * 1'000'000);
  if (queued) front_->Leave();
  ctx_->AddTrailingMetadata(kRequestIdKey, request_id_);
  finished_ns = now_ns();
  Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, message,
                      RetryStatus(grpc::StatusCode::RESOURCE_EXHAUSTED, message, delay)));
}

Batch::~Batch() {
  if (!settled) {
    for (Call* call : calls) call->Proxy();
  }
}

std::vector<Call*> Route::Detach(const std::vector<size_t>& at) {
  std::vector<Call*> taken;
  size_t kept = 0;
  auto next = at.begin();
  for (size_t position = 0; position < queue.size(); ++position) {
    if (next != at.end() && *next == position) {
      taken.push_back(queue[position]);
      queued_rows -= queue[position]->rows;
      ++next;
    } else {
      queue[kept++] = queue[position];
    }
  }
  queue.resize(kept);
  return taken;
}

// A batch a take could run: the positions of its calls in their route's queue, their rows, and whether it
// was cut (see `BatchFrom`).
struct Planned {
  std::vector<size_t> at;
  int64_t rows = 0;
  bool cut = false;
};

// The batch anchored on the call at `anchor` of the route's queue: it, then the calls after it in order, as
// many as fit `max_rows` (a call too large for the rows left is skipped) and, if `timed`, the time each call
// in the batch has left (the one added included) against the route's fit, with no margin (a call already
// admitted is passed over only when late for sure), from `steady`. Cut: not full, and its members' time left
// out a call that would otherwise have fit (one whose own time was too short does not cut it); once even one
// more row would end past the members' time, no later call can join, and the scan stops. Call with the
// route's lock held.
Planned BatchFrom(const Route& route, size_t anchor, int64_t max_rows, int64_t steady, bool timed) {
  Planned batch;
  batch.at.push_back(anchor);
  batch.rows = route.queue[anchor]->rows;
  double finish_by = static_cast<double>(route.queue[anchor]->arrived_ns + route.target_ns);
  for (size_t at = anchor + 1; at < route.queue.size() && batch.rows < max_rows; ++at) {
    const Call* call = route.queue[at];
    if (batch.rows + call->rows > max_rows) continue;
    if (timed) {
      double by = std::min(finish_by, static_cast<double>(call->arrived_ns + route.target_ns));
      double end = static_cast<double>(steady) + route.Predict(batch.rows + call->rows);
      if (end > by) {
        if (end > finish_by) {
          batch.cut = true;
          if (static_cast<double>(steady) + route.Predict(batch.rows + 1) > finish_by) break;
        }
        continue;
      }
      finish_by = by;
    }
    batch.at.push_back(at);
    batch.rows += call->rows;
  }
  batch.cut = batch.cut && batch.rows < max_rows;
  return batch;
}

// The largest batch anchored on a call of the route's queue, given that its members' deadlines cut the
// oldest call's batch (`oldest`) short, as the Python batcher's `_anchored` (docs/serving.md): the search
// doubles its step from the oldest call until a batch is not cut (the last call, alone, never is), bisects
// back to the first that is not, and runs the one with the most rows of those it built (the oldest anchor
// on a tie). The calls it passes over stay queued, and are refused at the next take if late by then.
Planned Anchored(const Route& route, Planned oldest, int64_t max_rows, int64_t steady) {
  size_t last = route.queue.size() - 1, cut = 0, uncut = 0, step = 1, best_at = 0;
  Planned best = std::move(oldest);
  auto build = [&](size_t anchor) {
    Planned batch = BatchFrom(route, anchor, max_rows, steady, true);
    bool was_cut = batch.cut;
    if (batch.rows > best.rows || (batch.rows == best.rows && anchor < best_at)) {
      best = std::move(batch);
      best_at = anchor;
    }
    return was_cut;
  };
  while (true) {
    uncut = std::min(cut + step, last);
    if (!build(uncut) || uncut == last) break;
    cut = uncut;
    step *= 2;
  }
  while (uncut - cut > 1) {
    size_t middle = (cut + uncut) / 2;
    if (build(middle)) {
      cut = middle;
    } else {
      uncut = middle;
    }
  }
  return best;
}

// Take up to `max_rows` rows of queued calls, waiting up to `timeout_us` for the first; None when none
// came or the front is closed, else (batch, each call's rows, each call's arrival on the monotonic clock in
// ns, as Python's time.monotonic_ns). Calls whose deadline passed (checked first: a passed deadline also
// cancels the call) or that were cancelled are finished here, and with a latency target so are those that,
// run now and alone, would end after it. A batch takes the queue in order (as admission planned it, in full
// batches); with a target, as many as each call's time allows, and if the oldest call's time cut its batch
// short, the batches anchored on younger calls are searched too (`Anchored`): batches cut to the oldest
// call's plan cost more per call, fell behind, and left most calls refused at a load the route serves whole.
py::object Take(Front& front, int handle, int64_t max_rows, int64_t timeout_us) {
  Route* route = front.route(handle);
  auto batch = std::make_unique<Batch>();
  batch->route = route;
  int64_t rows = 0;
  pump_thread = true;
  {
    py::gil_scoped_release release;
    std::unique_lock<std::mutex> lock(route->mu);
    if (route->running) {
      route->running = false;
      route->free_ns = now_ns();
    }
    auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(timeout_us);
    while (true) {
      if (!route->ready.wait_until(lock, until, [&] { return route->closed || !route->queue.empty(); })) break;
      auto now = std::chrono::system_clock::now();
      int64_t steady = now_ns();
      bool targeted = route->target_ns > 0 && route->costed;
      for (auto it = route->queue.begin(); it != route->queue.end();) {
        Call* call = *it;
        int64_t call_rows = call->rows;  // the call may be gone once it is finished below
        if (call->Expired(now)) {
          ++route->expired;
          call->Fail(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded");
        } else if (call->cancelled()) {
          ++route->cancelled;
          call->Fail(grpc::StatusCode::CANCELLED, "Cancelled");
        } else if (targeted && !call->probe &&
                   steady + route->Predict(call_rows) - call->arrived_ns > route->target_ns) {
          call->Shed(*route, route->Ahead(steady, 0), true);
        } else {
          ++it;
          continue;
        }
        it = route->Remove(it, call_rows);
      }
      if (!route->queue.empty()) {
        Planned planned = BatchFrom(*route, 0, max_rows, steady, targeted);
        if (planned.cut && !route->queue.front()->probe) {
          planned = Anchored(*route, std::move(planned), max_rows, steady);
        }
        rows = planned.rows;
        batch->calls = route->Detach(planned.at);
      }
      if (!batch->calls.empty() || route->closed) break;
    }
    if (!batch->calls.empty()) {
      route->running = true;
      route->running_started_ns = now_ns();
      route->running_rows = rows;
    }
  }
  if (batch->calls.empty()) return py::none();
  std::vector<int64_t> counts, arrived;
  for (Call* call : batch->calls) {
    counts.push_back(call->rows);
    arrived.push_back(call->arrived_ns);
  }
  return py::make_tuple(py::cast(batch.release(), py::return_value_policy::take_ownership), counts, arrived);
}

bool Contiguous(const py::buffer_info& info) {
  py::ssize_t stride = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] != 1 && info.strides[d] != stride) return false;
    stride *= info.shape[d];
  }
  return true;
}

// Copy the raw contents of registered input `slot` of every call of `batch`, one after another, into
// `into` (a writable C-contiguous buffer of exactly their size, e.g. a numpy array).
void Fill(Batch& batch, size_t slot, py::buffer into) {
  py::buffer_info info = into.request(true);
  if (!Contiguous(info)) throw std::invalid_argument("the buffer is not C-contiguous");
  size_t size = static_cast<size_t>(info.size * info.itemsize), needed = 0;
  for (Call* call : batch.calls) needed += call->request().raw_input_contents(call->input_order.at(slot)).size();
  if (size != needed) throw std::invalid_argument("the buffer does not fit the batch's input");
  auto* out = static_cast<char*>(info.ptr);
  py::gil_scoped_release release;
  for (Call* call : batch.calls) {
    const std::string& raw = call->request().raw_input_contents(call->input_order[slot]);
    std::memcpy(out, raw.data(), raw.size());
    out += raw.size();
  }
}

// Answer every call of `batch` with its rows of `outputs` (C-contiguous buffers in the registered order,
// of the registered datatypes' sizes), as the model version `version`; the calls at the indices of
// `timings` (those that asked for `maas-timing`, `Batch.timed`) with their entry.
void Reply(Batch& batch, const std::string& version, const std::vector<py::buffer>& outputs,
           const std::map<size_t, std::string>& timings) {
  if (batch.settled) throw std::invalid_argument("batch already answered");
  if (batch.calls.empty()) throw std::invalid_argument("the batch has no calls");
  Route* route = batch.route;
  if (outputs.size() != route->outputs.size()) throw std::invalid_argument("one array per registered output");
  int64_t rows = 0;
  for (Call* call : batch.calls) rows += call->rows;
  std::vector<py::buffer_info> infos;
  std::vector<size_t> row_bytes;
  for (size_t i = 0; i < outputs.size(); ++i) {
    infos.push_back(outputs[i].request());
    const py::buffer_info& info = infos.back();
    if (info.ndim < 1 || info.shape[0] != rows || !Contiguous(info) ||
        static_cast<size_t>(info.itemsize) != item_size(route->outputs[i].datatype))
      throw std::invalid_argument("output " + route->outputs[i].name + " does not fit the batch");
    row_bytes.push_back(static_cast<size_t>(info.size * info.itemsize / rows));
  }
  batch.settled = true;
  py::gil_scoped_release release;
  std::vector<size_t> offsets(outputs.size(), 0);
  for (size_t index = 0; index < batch.calls.size(); ++index) {
    Call* call = batch.calls[index];
    inference::ModelInferResponse response;
    response.set_model_name(route->model);
    response.set_model_version(version);
    response.set_id(call->request().id());
    for (size_t i = 0; i < outputs.size(); ++i) {
      auto* tensor = response.add_outputs();
      tensor->set_name(route->outputs[i].name);
      tensor->set_datatype(route->outputs[i].datatype);
      tensor->add_shape(call->rows);
      for (py::ssize_t d = 1; d < infos[i].ndim; ++d) tensor->add_shape(infos[i].shape[d]);
      size_t bytes = row_bytes[i] * static_cast<size_t>(call->rows);
      response.add_raw_output_contents(static_cast<const char*>(infos[i].ptr) + offsets[i], bytes);
      offsets[i] += bytes;
    }
    grpc::ByteBuffer buffer;
    bool own;
    grpc::GenericSerialize<grpc::ProtoBufferWriter, inference::ModelInferResponse>(response, &buffer, &own);
    auto timing = timings.find(index);
    call->Answer(std::move(buffer), timing == timings.end() ? kNoTiming : timing->second);
  }
}

// Hand the calls at `indices` of `batch` to the Python server, and answer the others with `outputs` later
// (`reply` on the batch `fallback` returns, which holds the rest).
py::object Fallback(Batch& batch, const std::vector<size_t>& indices) {
  if (batch.settled) throw std::invalid_argument("batch already answered");
  std::vector<bool> chosen(batch.calls.size(), false);
  for (size_t index : indices) chosen.at(index) = true;
  auto rest = std::make_unique<Batch>();
  rest->route = batch.route;
  for (size_t i = 0; i < batch.calls.size(); ++i) {
    if (chosen[i]) {
      batch.calls[i]->Proxy();
    } else {
      rest->calls.push_back(batch.calls[i]);
    }
  }
  batch.settled = true;
  return py::cast(rest.release(), py::return_value_policy::take_ownership);
}

// The calls of the route finished here unanswered since the last look: (cancelled, expired, shed, refused
// for a full queue).
std::tuple<uint64_t, uint64_t, uint64_t, uint64_t> Dropped(Front& front, int handle) {
  Route* route = front.route(handle);
  std::lock_guard<std::mutex> lock(route->mu);
  auto counts = std::make_tuple(route->cancelled, route->expired, route->shed, route->full);
  route->cancelled = route->expired = route->shed = route->full = 0;
  return counts;
}

// How long before its target a call of the route must be finished, in ns: the recent calls' write time
// (`kWriteQuantile` of the last `kWrites`); 0 before any, or without a target.
int64_t WriteNs(Front& front, int handle) { return front.route(handle)->write_ns.load(std::memory_order_relaxed); }

// The route's calls answered since the last look, by when they were written: (after the target, within it).
std::tuple<uint64_t, uint64_t> Written(Front& front, int handle) {
  Route* route = front.route(handle);
  std::lock_guard<std::mutex> lock(route->writes_mu);
  auto counts = std::make_tuple(route->late, route->in_time);
  route->late = route->in_time = 0;
  return counts;
}

// What a batch of the route costs, as the pump fits it: admission against the latency target starts with
// the first fit.
void SetCost(Front& front, int handle, double fixed_ns, double per_row_ns, double margin_ns, double forgiven_ns) {
  Route* route = front.route(handle);
  std::lock_guard<std::mutex> lock(route->mu);
  route->fixed_ns = fixed_ns;
  route->per_row_ns = per_row_ns;
  route->margin_ns = margin_ns;
  route->forgiven_ns = forgiven_ns;
  route->costed = true;
}

}  // namespace

PYBIND11_MODULE(_front, m) {
  m.doc() = "The native gRPC front of a model service (see services.common.front).";
  // The gRPC library stays up for the life of the process: without this reference it would be shut
  // down with the last front and brought up again with the next, whose shutdown threads may still run.
  grpc_init();
  py::class_<Batch>(m, "Batch")
      .def("__len__", [](const Batch& batch) { return batch.calls.size(); })
      .def_property_readonly("settled", [](const Batch& batch) { return batch.settled; })
      .def_property_readonly("timed",
                             [](const Batch& batch) {
                               std::vector<size_t> timed;
                               for (size_t i = 0; i < batch.calls.size(); ++i) {
                                 if (batch.calls[i]->timing) timed.push_back(i);
                               }
                               return timed;
                             })
      .def("fill", &Fill, py::arg("slot"), py::arg("into"));
  py::class_<Front>(m, "Front")
      .def(py::init<const std::string&, const std::string&, int, int64_t, int64_t, int, const std::string&>(),
           py::arg("address"), py::arg("upstream"), py::arg("max_message_bytes"), py::arg("max_connection_age_ms"),
           py::arg("max_connection_age_grace_ms"), py::arg("max_streams"), py::arg("id_prefix"))
      .def_property_readonly("port", &Front::port)
      .def("register", &Front::Register, py::arg("model"), py::arg("versions"), py::arg("inputs"), py::arg("outputs"),
           py::arg("max_rows"), py::arg("queue_limit"), py::arg("target_ns") = 0)
      .def("take", &Take, py::arg("handle"), py::arg("max_rows"), py::arg("timeout_us"))
      .def("dropped", &Dropped, py::arg("handle"))
      .def("write_ns", &WriteNs, py::arg("handle"))
      .def("written", &Written, py::arg("handle"))
      .def("set_cost", &SetCost, py::arg("handle"), py::arg("fixed_ns"), py::arg("per_row_ns"), py::arg("margin_ns"),
           py::arg("forgiven_ns"))
      .def("drain", &Front::Drain)
      .def_property_readonly("in_flight", &Front::in_flight)
      .def("shutdown", &Front::Shutdown, py::arg("grace_s"), py::call_guard<py::gil_scoped_release>());
  m.def("reply", &Reply, py::arg("batch"), py::arg("version"), py::arg("outputs"), py::arg("timings"));
  m.def("fallback", &Fallback, py::arg("batch"), py::arg("indices"));
}
