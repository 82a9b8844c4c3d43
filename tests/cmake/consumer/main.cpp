// Sends one message to itself through postbox; exit 0 when it arrives intact.
#include <postbox/postbox.hpp>

#include <chrono>
#include <cstdio>

int main() {
  postbox::context ctx;
  postbox::receiver rx(ctx, "@inproc://consumer");
  postbox::sender tx(ctx, ">inproc://consumer");
  tx.send("hello", "from an outside project");
  auto m = rx.receive(std::chrono::seconds(5));
  if (!m || m->payload() != "from an outside project") return 1;
  std::printf("consumer: got \"%.*s\" on \"%.*s\"\n", static_cast<int>(m->payload().size()),
              m->payload().data(), static_cast<int>(m->topic().size()), m->topic().data());
  return 0;
}
