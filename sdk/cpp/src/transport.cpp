#include "transport.hpp"

#include <algorithm>
#include <cctype>

namespace et {

void trim_header_value(std::string *v) {
  auto space = [](char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; };
  while (!v->empty() && space(v->back())) v->pop_back();
  size_t i = 0;
  while (i < v->size() && space((*v)[i])) i++;
  v->erase(0, i);
}

void take_header(const std::string &name, const std::string &value, HttpResponse *out) {
  std::string n = name;
  trim_header_value(&n);
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  std::string v = value;
  trim_header_value(&v);
  if (n == "retry-after") out->retry_after = v;
  else if (n == "content-type") out->content_type = v;
}

}  // namespace et
