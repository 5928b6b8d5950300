#pragma once
#include <memory>

#include "eventtracker/eventtracker.h"
#include "transport.hpp"

namespace et {
std::unique_ptr<Transport> make_app_transport(et_transport_fn fn, void *user);
}  // namespace et
