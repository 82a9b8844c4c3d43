// The reliable clients of postbox-queue (postbox/queue_client.hpp;
// docs/protocol.md, "16. The queue device").
#include <postbox/queue_client.hpp>

#include <postbox/detail/queue_wire.hpp>
#include <postbox/detail/ring.hpp>
#include <postbox/detail/socket.hpp>
#include <postbox/error.hpp>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include <sys/eventfd.h>
#include <unistd.h>

namespace postbox {

namespace wire = detail::queue_wire;
using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// Longest reason text a client sends or keeps from the device.
constexpr std::size_t max_reason = 1024;
constexpr milliseconds unsent_retry{50};  // no device connected yet: try again soon
constexpr std::size_t batch_max = 64;  // messages per frame from a producer
constexpr std::size_t batch_max_bytes = 256 * 1024;

void check_queue_name(std::string_view name) {
  if (auto why = wire::invalid_queue_name(name)) {
    throw config_error("queue \"" + std::string(name) + "\": " + *why);
  }
}

std::uint64_t to_ms(milliseconds d) {
  return d.count() > 0 ? static_cast<std::uint64_t>(d.count()) : 0;
}

}  // namespace

// ----------------------------------------------------------------- producer

struct producer::impl {
  struct pending {
    message_id id;
    std::string frame;  // the whole "pub" command, resent as it is
    confirm_callback done;
    steady::time_point first_sent;
    steady::time_point resend_at;
    bool transmitted = false;  // handed to libzmq at least once
  };

  impl(context& ctx, std::string_view endpoints, std::string q, producer_options o)
      : sock(ctx, zmq::socket_type::dealer, endpoints, endpoint_mode::connect, o.socket, true),
        queue(std::move(q)),
        opts(o) {
    check_queue_name(queue);
    if (opts.window == 0) throw config_error("producer window must be positive");
    if (opts.resend_after.count() <= 0) throw config_error("producer resend_after must be positive");
    if (opts.give_up_after < opts.resend_after) {
      throw config_error("producer give_up_after must be at least resend_after");
    }
    // Room for every spare node now: keeping one must never fail.
    spare.reserve(std::min(max_spare, opts.window));
  }

  // Sends a message again, alone, without waiting; false when libzmq would block.
  bool resend(pending& p) {
    zmq::message_t f(p.frame.data(), p.frame.size());
    const auto r = sock.socket.send(f, zmq::send_flags::dontwait);
    p.resend_at = steady::now() + (r ? opts.resend_after : unsent_retry);
    return r.has_value();
  }

  // Messages go out in the order they were sent, up to batch_max in one
  // frame (["batch", [pub, ...]]): one libzmq could not take (no device
  // connected yet, a full pipe) holds back every later one, so that messages
  // with one key reach the device in order.
  bool send_untransmitted() {
    while (untransmitted > 0) {
      // The untransmitted messages are the newest ones: start after the last sent.
      const auto first = unconfirmed.upper_bound(transmitted_upto);
      auto end = first;
      std::size_t n = 0, bytes = 0;
      // A batch stays under batch_max_bytes (a larger message travels alone),
      // so that it never passes the device's max_message_size when its
      // messages do not.
      while (end != unconfirmed.end() && n < batch_max &&
             (n == 0 || bytes + end->second.frame.size() <= batch_max_bytes)) {
        bytes += end->second.frame.size();
        ++n;
        ++end;
      }
      if (n == 0) return true;
      bool sent = false;
      if (n == 1) {
        zmq::message_t f(first->second.frame.data(), first->second.frame.size());
        sent = sock.socket.send(f, zmq::send_flags::dontwait).has_value();
      } else {
        command.start(wire::cmd_batch, 1).array(static_cast<std::uint32_t>(n));
        zmq::message_t f(command.view().size() + bytes);
        char* at = static_cast<char*>(f.data());
        std::memcpy(at, command.view().data(), command.view().size());
        at += command.view().size();
        for (auto it = first; it != end; ++it) {
          std::memcpy(at, it->second.frame.data(), it->second.frame.size());
          at += it->second.frame.size();
        }
        sent = sock.socket.send(f, zmq::send_flags::dontwait).has_value();
      }
      if (!sent) return false;  // resend_due tries again soon
      const auto resend_at = steady::now() + opts.resend_after;
      for (auto it = first; it != end; ++it) {
        it->second.transmitted = true;
        it->second.resend_at = resend_at;
        transmitted_upto = it->first;
      }
      untransmitted -= n;
    }
    return true;
  }

  void finish(std::map<std::uint64_t, pending>::iterator it, confirm c, std::size_t& ran) {
    confirm_callback done = std::move(it->second.done);
    c.id = it->second.id;
    if (!it->second.transmitted) --untransmitted;
    // The node, and its frame's buffer, serve a later message.
    auto node = unconfirmed.extract(it);
    if (spare.size() < std::min(max_spare, opts.window) &&
        node.mapped().frame.capacity() <= max_spare_frame) {
      spare.push_back(std::move(node));
    }
    ++ran;
    if (done) done(c);
  }

  // Handles one frame from the device; returns the callbacks run.
  std::size_t handle(const zmq::message_t& f) {
    std::size_t ran = 0;
    wire::reader in(f.data(), f.size());
    std::uint32_t n = 0;
    std::string_view name;
    if (!in.array(n) || n < 2 || !in.bytes(name, 16)) {
      ++st.rejected;
      return 0;
    }
    if (name == wire::cmd_confirm) {
      std::uint32_t count = 0;
      if (!in.array(count)) {
        ++st.rejected;
        return 0;
      }
      for (std::uint32_t i = 0; i < count; ++i) {
        std::uint64_t seq = 0;
        if (!in.uint(seq)) {
          ++st.rejected;
          return ran;
        }
        // Unknown: a duplicate confirm of a resend already confirmed.
        if (auto it = unconfirmed.find(seq); it != unconfirmed.end()) {
          ++st.confirmed;
          finish(it, {true, {}, {}}, ran);
        }
      }
    } else if (name == wire::cmd_refuse && n == 3) {
      std::uint64_t seq = 0;
      std::string_view reason;
      if (!in.uint(seq) || !in.bytes(reason, max_reason)) {
        ++st.rejected;
        return 0;
      }
      if (auto it = unconfirmed.find(seq); it != unconfirmed.end()) {
        ++st.refused;
        finish(it, {false, std::string(reason), {}}, ran);
      }
    } else {
      ++st.rejected;
    }
    return ran;
  }

  // Resends what is due and fails what is past give_up_after.
  std::size_t resend_due() {
    std::size_t ran = 0;
    const auto now = steady::now();
    if (now < next_check) return 0;
    next_check = now + unsent_retry;
    send_untransmitted();
    for (auto it = unconfirmed.begin(); it != unconfirmed.end();) {
      auto next = std::next(it);
      pending& p = it->second;
      if (now - p.first_sent >= opts.give_up_after) {
        ++st.timed_out;
        finish(it, {false, "timed out", {}}, ran);
      } else if (p.transmitted && now >= p.resend_at) {
        if (resend(p)) ++st.resent;
      }
      it = next;
    }
    return ran;
  }

  std::size_t poll(milliseconds timeout) {
    send_untransmitted();
    std::size_t ran = resend_due();
    detail::time_budget budget(timeout);
    while (true) {
      zmq::message_t f;
      if (sock.socket.recv(f, zmq::recv_flags::dontwait)) {
        if (f.more()) {  // not ours: drain and count the whole message
          while (f.more() && sock.socket.recv(f, zmq::recv_flags::dontwait)) {
          }
          ++st.rejected;
          continue;
        }
        ran += handle(f);
        continue;
      }
      ran += resend_due();
      if (ran > 0 || budget.ran_out() || timeout.count() == 0) return ran;
      // Wake for the next resend at the latest.
      int wait = budget.left();
      if (!unconfirmed.empty()) {
        const int step = static_cast<int>(unsent_retry.count());
        wait = wait < 0 ? step : std::min(wait, step);
      }
      zmq::pollitem_t item{sock.socket.handle(), 0, ZMQ_POLLIN, 0};
      if (zmq_poll(&item, 1, wait) < 0) {
        if (zmq_errno() == EINTR) return ran;  // a signal: let the caller look at it
        throw transport_error(std::string("producer poll: ") + zmq_strerror(zmq_errno()));
      }
    }
  }

  void send_async(const message& m, confirm_callback done, const publish_options& po) {
    while (unconfirmed.size() >= opts.window) poll(milliseconds(100));
    stamp s = sock.next_stamp();
    if (!m.id().is_nil()) s.id = m.id();
    wire::encode_envelope(m, s, envelope);
    const std::uint64_t seq = ++next_seq;
    command.start(wire::cmd_publish, 5).uint(seq).str(queue).uint(to_ms(po.delay))
        .uint(to_ms(po.ttl)).bin(envelope);
    if (spare.empty()) {
      unconfirmed.emplace(
          seq, pending{s.id, std::string(command.view()), std::move(done), steady::now(), {}});
    } else {
      auto node = std::move(spare.back());
      spare.pop_back();
      node.key() = seq;
      pending& p = node.mapped();
      p.id = s.id;
      p.frame.assign(command.view());
      p.done = std::move(done);
      p.first_sent = steady::now();
      p.resend_at = {};
      p.transmitted = false;
      unconfirmed.insert(std::move(node));
    }
    ++st.sent;
    // Sent in batches: once batch_max are waiting, or at the next poll().
    if (++untransmitted >= batch_max) send_untransmitted();
  }

  detail::channel_socket sock;
  std::string queue;
  producer_options opts;
  producer_stats st;
  std::map<std::uint64_t, pending> unconfirmed;
  // Nodes of confirmed messages, reused by send_async: no allocation per message.
  static constexpr std::size_t max_spare = 4096;  // and at most the window
  static constexpr std::size_t max_spare_frame = 4096;
  std::vector<std::map<std::uint64_t, pending>::node_type> spare;
  std::uint64_t next_seq = 0;
  std::size_t untransmitted = 0;  // pending messages never handed to libzmq
  std::uint64_t transmitted_upto = 0;  // every seq up to this one was handed to libzmq
  steady::time_point next_check{};
  wire::writer command;
  std::string envelope;
};

producer::producer(context& ctx, std::string_view endpoints, std::string queue,
                   producer_options opts)
    : impl_(std::make_unique<impl>(ctx, endpoints, std::move(queue), opts)) {}
producer::~producer() = default;
producer::producer(producer&&) noexcept = default;
producer& producer::operator=(producer&&) noexcept = default;

confirm producer::send(const message& m, const publish_options& po) {
  // Shared, not on this stack: if poll() throws, the callback may still run later.
  auto result = std::make_shared<std::optional<confirm>>();
  impl_->send_async(m, [result](const confirm& c) { *result = c; }, po);
  while (!*result) impl_->poll(milliseconds(100));
  return **result;
}

void producer::send_async(const message& m, confirm_callback done, const publish_options& po) {
  impl_->send_async(m, std::move(done), po);
}

std::size_t producer::poll(milliseconds timeout) { return impl_->poll(timeout); }

bool producer::flush(milliseconds timeout) {
  detail::time_budget budget(timeout);
  while (!impl_->unconfirmed.empty()) {
    const int left = budget.left();
    if (budget.ran_out()) break;
    impl_->poll(milliseconds(left < 0 ? 100 : std::min(left, 100)));
  }
  return impl_->unconfirmed.empty();
}

std::size_t producer::unconfirmed() const noexcept { return impl_->unconfirmed.size(); }
const producer_stats& producer::stats() const noexcept { return impl_->st; }
const std::string& producer::queue() const noexcept { return impl_->queue; }

// ----------------------------------------------------------------- consumer

struct consumer::impl {
  struct outgoing {
    verdict::kind what;
    std::uint64_t tag;
    std::uint64_t delay_ms;
    std::string reason;
  };

  impl(context& ctx, std::string_view endpoints, std::vector<std::string> q, consumer_options o)
      : sock(ctx, zmq::socket_type::dealer, endpoints, endpoint_mode::connect, o.socket, true),
        queues(std::move(q)),
        opts(o) {
    if (queues.empty()) throw config_error("a consumer needs at least one queue");
    for (const auto& name : queues) check_queue_name(name);
    // The ranges the device accepts (docs/protocol.md 16.2); outside them it
    // would refuse every "take" and this consumer would wait forever.
    if (opts.prefetch == 0 || opts.prefetch > 1'000'000) {
      throw config_error("consumer prefetch must be 1 .. 1000000");
    }
    if (opts.heartbeat.count() < 10 || opts.heartbeat.count() > 600'000) {
      throw config_error("consumer heartbeat must be 10 .. 600000 ms");
    }
    wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0) throw transport_error("consumer: eventfd failed");
    io = std::thread([this] {
      try {
        loop();
      } catch (const std::exception& e) {
        // A failing socket (the context closing): stop serving, and say so
        // to the user's thread; the device gives what this consumer held to others.
        std::lock_guard lk(mu);
        failure = e.what();
      }
      arrived.notify_all();
    });
  }

  ~impl() {
    {
      std::lock_guard lk(mu);
      stopping = true;
    }
    signal();
    io.join();
    ::close(wake);
  }

  void signal() noexcept {
    const std::uint64_t one = 1;
    (void)!::write(wake, &one, sizeof one);
  }

  void post(outgoing o) {
    bool was_empty = false;
    {
      std::lock_guard lk(mu);
      switch (o.what) {
        case verdict::kind::ack: ++st.acked; break;
        case verdict::kind::nack: ++st.nacked; break;
        case verdict::kind::reject: ++st.rejected_by_handler; break;
      }
      was_empty = outbox.empty();
      outbox.push_back(std::move(o));
    }
    if (was_empty) signal();  // the I/O thread takes the whole batch at once
  }

  // ---- the I/O thread: the only user of sock ----

  void send(const wire::writer& w) {
    zmq::message_t f(w.view().data(), w.view().size());
    // Never blocks: with no device connected a command is dropped, and the
    // device's own timeouts (heartbeat, visibility) make up for it.
    (void)sock.socket.send(f, zmq::send_flags::dontwait);
  }

  void send_take() {
    out.start(wire::cmd_take, 3).array(static_cast<std::uint32_t>(queues.size()));
    for (const auto& q : queues) out.str(q);
    out.uint(opts.prefetch).uint(to_ms(opts.heartbeat));
    send(out);
  }

  // Reads one "dlv" (its name already read) from `frame` into `got`; false
  // when malformed. A large payload shares the frame's buffer (decode_shared).
  bool read_delivery(zmq::message_t& frame, wire::reader& in, std::vector<delivery>& got) {
    std::uint64_t tag = 0, attempt = 0;
    std::string_view queue, envelope;
    if (!in.uint(tag) || !in.bytes(queue, 100) || !in.uint(attempt) || attempt > 0xFFFF'FFFFu ||
        !in.bytes(envelope, static_cast<std::size_t>(opts.socket.max_message_size))) {
      return false;
    }
    delivery d;
    const auto offset = static_cast<std::size_t>(envelope.data() - static_cast<const char*>(frame.data()));
    if (const auto why = decode_shared(frame, offset, envelope.size(), d.msg)) {
      // The device checked it on the way in: it changed since. It cannot be
      // handled here or anywhere, so it goes to the dead-letter queue.
      flush_outbox_item({verdict::kind::reject, tag, 0,
                         "consumer could not decode the message: " + std::string(to_string(*why))});
      return true;
    }
    d.msg.set_attempt(static_cast<std::uint32_t>(attempt));
    d.queue.assign(queue);
    d.tag = tag;
    d.attempt = static_cast<std::uint32_t>(attempt);
    got.push_back(std::move(d));
    return true;
  }

  // A "dlv", a "batch" of them, or the device's heartbeat.
  void handle(zmq::message_t& f) {
    wire::reader in(f.data(), f.size());
    std::uint32_t n = 0;
    std::string_view cmd;
    if (!in.array(n) || n < 1 || !in.bytes(cmd, 16)) return count_rejected();
    if (cmd == wire::cmd_heartbeat && n == 1) return;
    arriving.clear();
    if (cmd == wire::cmd_deliver && n == 5) {
      if (!read_delivery(f, in, arriving)) return count_rejected();
    } else if (cmd == wire::cmd_batch && n == 2) {
      std::uint32_t count = 0;
      if (!in.array(count)) return count_rejected();
      for (std::uint32_t i = 0; i < count; ++i) {
        std::uint32_t m = 0;
        std::string_view inner;
        if (!in.array(m) || m != 5 || !in.bytes(inner, 16) || inner != wire::cmd_deliver ||
            !read_delivery(f, in, arriving)) {
          count_rejected();
          break;  // the rest of the frame cannot be trusted; what came before is kept
        }
      }
    } else {
      return count_rejected();
    }
    if (arriving.empty()) return;
    {
      std::lock_guard lk(mu);
      for (auto& d : arriving) inbox.push_back(std::move(d));
    }
    arrived.notify_one();
  }

  void count_rejected() {
    std::lock_guard lk(mu);
    ++st.rejected;
  }

  void flush_outbox_item(outgoing o) {
    single.clear();
    single.push_back(std::move(o));
    flush_outbox(single);
  }

  void flush_outbox(std::vector<outgoing>& batch) {
    std::size_t acks = 0;
    for (const auto& o : batch) acks += o.what == verdict::kind::ack;
    if (acks > 0) {
      out.start(wire::cmd_ack, 1).array(static_cast<std::uint32_t>(acks));
      for (const auto& o : batch)
        if (o.what == verdict::kind::ack) out.uint(o.tag);
      send(out);
    }
    for (const auto& o : batch) {
      if (o.what == verdict::kind::nack) {
        out.start(wire::cmd_nack, 3).uint(o.tag).uint(o.delay_ms).str(o.reason);
        send(out);
      } else if (o.what == verdict::kind::reject) {
        out.start(wire::cmd_reject, 2).uint(o.tag).str(o.reason);
        send(out);
      }
    }
    batch.clear();
  }

  void loop() {
    send_take();
    auto next_beat = steady::now() + opts.heartbeat;
    std::vector<outgoing> batch;
    while (true) {
      zmq::pollitem_t items[] = {{sock.socket.handle(), 0, ZMQ_POLLIN, 0},
                                 {nullptr, wake, ZMQ_POLLIN, 0}};
      const auto wait = std::chrono::ceil<milliseconds>(next_beat - steady::now());
      if (zmq_poll(items, 2, std::max<long>(static_cast<long>(wait.count()), 0)) < 0) {
        if (zmq_errno() == EINTR) continue;  // a signal for this process: keep serving
        throw transport_error(std::string("consumer poll: ") + zmq_strerror(zmq_errno()));
      }
      if (items[0].revents & ZMQ_POLLIN) {
        zmq::message_t f;
        for (int i = 0; i < 1000 && sock.socket.recv(f, zmq::recv_flags::dontwait); ++i) {
          if (f.more()) {
            while (f.more() && sock.socket.recv(f, zmq::recv_flags::dontwait)) {
            }
            count_rejected();
            continue;
          }
          handle(f);
        }
      }
      if (items[1].revents & ZMQ_POLLIN) {
        std::uint64_t ignored = 0;
        (void)!::read(wake, &ignored, sizeof ignored);
      }
      bool stop = false;
      {
        std::lock_guard lk(mu);
        batch.swap(outbox);
        stop = stopping;
      }
      flush_outbox(batch);
      if (stop) {
        out.start(wire::cmd_bye, 0);
        send(out);
        return;
      }
      if (steady::now() >= next_beat) {
        send_take();
        next_beat = steady::now() + opts.heartbeat;
        std::lock_guard lk(mu);
        inbox.shrink();  // after a burst; not as it drains, which is all the time
      }
    }
  }

  detail::channel_socket sock;
  std::vector<std::string> queues;
  consumer_options opts;
  int wake = -1;
  wire::writer out;  // I/O thread only
  std::vector<delivery> arriving;  // I/O thread only
  std::vector<outgoing> single;    // I/O thread only

  mutable std::mutex mu;
  std::condition_variable arrived;
  detail::ring<delivery> inbox;   // guarded by mu
  std::vector<outgoing> outbox;   // guarded by mu
  bool stopping = false;          // guarded by mu
  std::string failure;            // guarded by mu: why the I/O thread stopped, if it did
  consumer_stats st;              // guarded by mu
  std::thread io;  // last: starts after everything above exists
};

consumer::consumer(context& ctx, std::string_view endpoints, std::vector<std::string> queues,
                   consumer_options opts)
    : impl_(std::make_unique<impl>(ctx, endpoints, std::move(queues), opts)) {}
consumer::~consumer() = default;

std::optional<delivery> consumer::receive(milliseconds timeout) {
  std::unique_lock lk(impl_->mu);
  auto ready = [this] { return !impl_->inbox.empty() || !impl_->failure.empty(); };
  if (timeout.count() < 0) {
    impl_->arrived.wait(lk, ready);
  } else if (!impl_->arrived.wait_for(lk, timeout, ready)) {
    return std::nullopt;
  }
  if (impl_->inbox.empty()) throw transport_error("consumer stopped: " + impl_->failure);
  delivery d = std::move(impl_->inbox.front());
  impl_->inbox.pop_front();
  ++impl_->st.received;
  return d;
}

void consumer::ack(const delivery& d) {
  impl_->post({verdict::kind::ack, d.tag, 0, {}});
}

void consumer::nack(const delivery& d, std::string_view reason, milliseconds delay) {
  impl_->post({verdict::kind::nack, d.tag, to_ms(delay),
               std::string(reason.substr(0, max_reason))});
}

void consumer::reject(const delivery& d, std::string_view reason) {
  impl_->post({verdict::kind::reject, d.tag, 0, std::string(reason.substr(0, max_reason))});
}

bool consumer::process_one(const delivery_handler& handler, milliseconds timeout) {
  auto d = receive(timeout);
  if (!d) return false;
  verdict v;
  try {
    v = handler(*d);
  } catch (const std::exception& e) {
    v = verdict::retry(e.what());
  } catch (...) {
    v = verdict::retry("unknown exception");
  }
  switch (v.what) {
    case verdict::kind::ack: ack(*d); break;
    case verdict::kind::nack: nack(*d, v.reason, v.delay); break;
    case verdict::kind::reject: reject(*d, v.reason); break;
  }
  return true;
}

std::size_t consumer::run(const delivery_handler& handler, const std::atomic<bool>& stop) {
  std::size_t handled = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    handled += process_one(handler, milliseconds(100)) ? 1 : 0;
  }
  return handled;
}

consumer_stats consumer::stats() const {
  std::lock_guard lk(impl_->mu);
  return impl_->st;
}

}  // namespace postbox
