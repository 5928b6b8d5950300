/* An LD_PRELOAD shim for the tests: getaddrinfo of a host whose name starts with "stalled" sleeps
 * ET_SLOW_DNS_MS milliseconds (a resolver that hangs), says so on stderr, then fails as a timeout would.
 * Every other name goes to the real resolver. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
  if (node && strncmp(node, "stalled", 7) == 0) {
    const char *ms = getenv("ET_SLOW_DNS_MS");
    long n = ms ? atol(ms) : 8000;
    fprintf(stderr, "slow_dns: getaddrinfo(%s) stalls %ld ms\n", node, n);
    fflush(stderr);
    struct timespec t = {n / 1000, (n % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {
    }
    return EAI_AGAIN;
  }
  gai_fn real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
  return real(node, service, hints, res);
}
