// A game loop that reports events to EventTracker.
//   game_loop [endpoint] [token] [queue_path] [frames]
#include <eventtracker/client.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

int main(int argc, char **argv) {
  const char *endpoint = argc > 1 ? argv[1] : "http://127.0.0.1:8080";
  const char *token = argc > 2 ? argv[2] : "dev-token";
  const char *queue = argc > 3 ? argv[3] : "game-events.db";
  int frames = argc > 4 ? std::atoi(argv[4]) : 600;
  try {
    eventtracker::Client analytics(endpoint, token, queue);
    analytics.on_report([](const eventtracker::Report &r) {
      if (r.kind != ET_REPORT_REQUEST && r.kind != ET_REPORT_SENT) std::fprintf(stderr, "eventtracker: %s\n", r.message);
    });
    analytics.track("game_start", R"({"build":"1.4.2","platform":"linux"})");
    for (int frame = 0; frame < frames; frame++) {
      if (frame % 60 == 0) {  // once a second of game time
        std::string props = "{\"frame\":" + std::to_string(frame) + ",\"fps\":60}";
        analytics.track("heartbeat", props, "player-1");  // cheap: no I/O on this thread
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(16));
    }
    analytics.track("game_end", R"({"reason":"quit"})", "player-1");
    bool all = analytics.flush(std::chrono::seconds(2));
    auto k = analytics.counters();
    std::printf("flushed=%s sent=%llu queued=%llu\n", all ? "yes" : "no (kept on disk)",
                static_cast<unsigned long long>(k.sent), static_cast<unsigned long long>(k.queued));
    // ~Client closes within 2 s whatever the network does; unsent events stay in the queue file.
  } catch (const eventtracker::Error &e) {
    std::fprintf(stderr, "cannot start analytics: %s\n", e.what());
    return 1;
  }
  return 0;
}
