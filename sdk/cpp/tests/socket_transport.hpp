// A transport written in the tests, over plain sockets (HTTP/1.1, one connection per request), installed
// through the C ABI seam et_client_set_transport. With ET_TEST_TRANSPORT=sockets, every client the tests
// make (new_client, the helper process) sends through it, so the whole suite runs over the seam.
#pragma once
#include "eventtracker/eventtracker.h"

namespace h {
// The et_transport_fn; user is unused.
void socket_transport(void *user, const et_http_request *request, et_http_response *response);
// Installs it on c when ET_TEST_TRANSPORT=sockets; returns whether it did.
bool maybe_use_socket_transport(et_client *c);
}  // namespace h
