#!/usr/bin/env bash
# 7. Packaging. Usage: packaging.sh SRC BUILD CMAKE LIBFILE [CC CXX]
#  a. the build under test (BUILD, normally shared): install it into a temporary prefix; check a shared
#     library exports only et_* (no C++ ABI) and its SONAME; build and run a find_package(EventTracker CONFIG)
#     consumer (C++ and C), a pkg-config consumer, and compile the header as strict C89 and C11;
#  b. a static build (BUILD/packaging/static, -DBUILD_SHARED_LIBS=OFF, same compilers): install it; run a
#     find_package consumer and a C consumer linked with `pkg-config --static` (nothing of the SDK left to
#     the dynamic loader); link the whole archive into an executable (every symbol it leaves undefined must come
#     from the declared dependencies); list what the archive defines beyond et_*;
#  c. an add_subdirectory consumer with the SDK's default options and GTest hidden (tests are off for
#     subprojects), static (the parent sets no BUILD_SHARED_LIBS) and shared (-DBUILD_SHARED_LIBS=ON);
#  d. the stripped sizes of the shared and static libraries.
# CMAKE is the cmake that configured BUILD (scripts/test-sdk also runs this with CMake 3.16).
set -euo pipefail
src=$1 build=$2 cmake=$3 lib=$4 cc=${5:-cc} cxx=${6:-c++}
work=$build/packaging  # kept between runs: the static and add_subdirectory builds are incremental
mkdir -p "$work"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/et-sdk-pkg.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
jobs=${ET_SDK_JOBS:-2}
compilers=(-DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx")
build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")
quiet() { # CMD...: runs CMD, shows its output only when it fails
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [ "$rc" -eq 0 ] || { echo "FAIL ($rc): $*"; echo "$out" | tail -40; exit 1; }
}

# ---- the consumers' sources (stable paths, so their build folders can be reused) ----
mkdir -p "$work/consumer"
cat > "$work/consumer/CMakeLists.txt.new" <<'CM'
cmake_minimum_required(VERSION 3.16)
project(consumer LANGUAGES C CXX)
# no CMAKE_CXX_STANDARD: the target brings C++17 (cxx_std_17) for client.hpp
find_package(EventTracker 1.0 CONFIG REQUIRED)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE EventTracker::eventtracker)
add_executable(consumer_c main.c)
target_link_libraries(consumer_c PRIVATE EventTracker::eventtracker)
CM
cat > "$work/consumer/main.cpp.new" <<'CPP'
#include <eventtracker/client.hpp>
#include <cstdio>
int main() {
  eventtracker::Client c("http://127.0.0.1:9", "token");  // memory queue, nothing listening
  if (c.track("consumer_started", R"({"ok":true})") != ET_OK) return 1;
  if (c.track("") != ET_E_NAME) return 2;
  c.close(std::chrono::milliseconds(0));
  std::printf("consumer ok %s\n", et_version());
  return 0;
}
CPP
cat > "$work/consumer/main.c.new" <<'C'
#include <eventtracker/eventtracker.h>
#include <stdio.h>
int main(void) {
  char err[256];
  et_counters k;
  et_client *c = et_client_new("http://127.0.0.1:9", "token", NULL, err, sizeof err);
  if (!c) { fprintf(stderr, "%s\n", err); return 1; }
  if (et_track(c, "c_consumer", "{\"lang\":\"c\"}", NULL) != ET_OK) return 2;
  et_client_counters(c, &k);
  et_client_free(c, 0);
  printf("c consumer ok %s tracked=%llu\n", et_version(), (unsigned long long)k.tracked);
  return k.tracked == 1 ? 0 : 3;
}
C
mkdir -p "$work/sub"
cat > "$work/sub/CMakeLists.txt.new" <<CM
cmake_minimum_required(VERSION 3.16)
project(sub LANGUAGES C CXX)
add_subdirectory("$src" eventtracker)
add_executable(sub_consumer "$work/consumer/main.cpp")
target_link_libraries(sub_consumer PRIVATE EventTracker::eventtracker)
add_executable(sub_consumer_c "$work/consumer/main.c")
target_link_libraries(sub_consumer_c PRIVATE EventTracker::eventtracker)
CM
for f in "$work"/consumer/*.new "$work"/sub/*.new; do  # rewrite only what changed (keeps the builds incremental)
  if cmp -s "$f" "${f%.new}"; then rm "$f"; else mv "$f" "${f%.new}"; fi
done

# a fresh configure (a new cache) in a reused build folder
configure() { # BUILD_DIR SOURCE_DIR ARGS...
  local b=$1 s=$2; shift 2
  rm -f "$b/CMakeCache.txt"
  quiet "$cmake" -S "$s" -B "$b" "${compilers[@]}" ${build_type:+-DCMAKE_BUILD_TYPE=$build_type} "$@"
}
# the consumer project against an installed PREFIX, built in BUILD_DIR; runs both programs
find_package_consumer() { # PREFIX BUILD_DIR
  configure "$2" "$work/consumer" -DCMAKE_PREFIX_PATH="$1"
  quiet "$cmake" --build "$2" -j"$jobs"
  LD_LIBRARY_PATH="$1/lib:${LD_LIBRARY_PATH:-}" "$2/consumer"
  LD_LIBRARY_PATH="$1/lib:${LD_LIBRARY_PATH:-}" "$2/consumer_c"
}
pc_dir() { ls -d "$1"/lib*/pkgconfig | head -1; }
size_of() { stat -c %s "$1"; }

# ==== a. the build under test ====
prefix=$tmp/prefix
quiet "$cmake" --install "$build" --prefix "$prefix"
echo "installed $build into $prefix"
case "$lib" in
  *.so|*.so.*)
    # exported symbols: only et_*, nothing mangled
    syms=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | sed 's/@.*//')
    bad=$(echo "$syms" | grep -v '^et_' || true)
    [ -z "$bad" ] || { echo "FAIL: exported symbols other than et_*:"; echo "$bad"; exit 1; }
    if echo "$syms" | grep -q '^_Z'; then echo "FAIL: C++ symbols exported"; exit 1; fi
    echo "shared: exports $(echo "$syms" | wc -l) symbols, all et_*: $(echo "$syms" | tr '\n' ' ')"
    soname=$(objdump -p "$lib" | awk '$1 == "SONAME" {print $2}')
    [ "$soname" = libeventtracker.so.1 ] || { echo "FAIL: SONAME is '$soname'"; exit 1; }
    ;;
  *) echo "the build under test is not a shared library ($lib): its export checks skipped" ;;
esac
find_package_consumer "$prefix" "$work/consumer-build"
echo "find_package consumer (C++ and C) ok"

# the header compiles as strict C (C89 and C11), warnings as errors
for std in c89 c11; do
  "$cc" -std=$std -pedantic -Wall -Wextra -Werror -fsyntax-only -I"$prefix/include" "$work/consumer/main.c" \
    -Wno-long-long -Wno-declaration-after-statement
done
echo "header compiles as C89 and C11"

# pkg-config (a shared library: the program finds it through LD_LIBRARY_PATH or an rpath)
flags=$(PKG_CONFIG_PATH="$(pc_dir "$prefix")" pkg-config --cflags --libs eventtracker)
"$cc" -o "$tmp/pc_consumer" "$work/consumer/main.c" $flags
LD_LIBRARY_PATH="$prefix/lib:${LD_LIBRARY_PATH:-}" "$tmp/pc_consumer"
echo "pkg-config: $flags"

# ==== b. a static build ====
sbuild=$work/static
configure "$sbuild" "$src" -DBUILD_SHARED_LIBS=OFF -DEVENTTRACKER_BUILD_TESTS=OFF -DEVENTTRACKER_BUILD_EXAMPLES=OFF
quiet "$cmake" --build "$sbuild" -j"$jobs"
sprefix=$tmp/static-prefix
quiet "$cmake" --install "$sbuild" --prefix "$sprefix"
archive=$(ls "$sprefix"/lib*/libeventtracker.a)
if ls "$sprefix"/lib*/libeventtracker.so* >/dev/null 2>&1; then echo "FAIL: the static build installed a .so"; exit 1; fi
echo "installed the static build into $sprefix: $archive"

find_package_consumer "$sprefix" "$work/static-consumer-build"
for p in consumer consumer_c; do
  if ldd "$work/static-consumer-build/$p" | grep -q eventtracker; then echo "FAIL: $p loads a libeventtracker"; exit 1; fi
done
echo "static: find_package consumer (C++ and C) ok, linked statically"

spc=$(pc_dir "$sprefix")
sflags=$(PKG_CONFIG_PATH="$spc" pkg-config --static --cflags --libs eventtracker)
"$cc" -o "$tmp/pc_static_consumer" "$work/consumer/main.c" $sflags
if ldd "$tmp/pc_static_consumer" | grep -q eventtracker; then echo "FAIL: pc_static_consumer loads a libeventtracker"; exit 1; fi
"$tmp/pc_static_consumer"
echo "static: pkg-config --static: $sflags"

# Every member of the archive linked in (not only those main.c needs): what the archive leaves undefined
# must all come from the dependencies pkg-config declares (an executable's link allows nothing undefined).
wflags=$(echo " $sflags " | sed 's/ -leventtracker / -Wl,--whole-archive -leventtracker -Wl,--no-whole-archive /')
"$cc" -o "$tmp/whole_archive" "$work/consumer/main.c" $wflags
"$tmp/whole_archive" >/dev/null
undef=$(nm -g --undefined-only "$archive" | awk 'NF == 2 && $1 == "U" {print $2}' | sort -u)
def=$(nm -g --defined-only "$archive" | awk 'NF == 3 {print $3}' | sort -u)
external=$(comm -23 <(echo "$undef") <(echo "$def"))
group() { echo "$external" | grep -c -E "$1" || true; }
echo "static: the whole archive links with only its declared dependencies; it needs" \
  "$(echo "$external" | wc -l) symbols from outside: curl_* $(group '^curl_'), sqlite3_* $(group '^sqlite3_')," \
  "zlib $(group '^(deflate|inflate|crc32|adler32|zlib|compress|uncompress)')," \
  "C++ runtime $(group '^(_Z|__cxa|__gxx|_Unwind|__dynamic_cast)'), libc/pthread and the rest $(echo "$external" | grep -v -c -E '^(curl_|sqlite3_|deflate|inflate|crc32|adler32|zlib|compress|uncompress|_Z|__cxa|__gxx|_Unwind|__dynamic_cast)' || true)"

# What the archive defines globally beyond et_*: a static library cannot hide its C++ internals from the final
# link (hidden visibility keeps them out of a shared object's exports, not out of the link's name space).
# Expected: the SDK's own namespaced C++ (et::..., anonymous namespaces are local) and the C++ runtime's inline
# and template instantiations (weak, merged with the consumer's own).
readelf -sW "$archive" | awk '$5 ~ /GLOBAL|WEAK/ && $7 != "UND" && $4 != "FILE" && $4 != "SECTION" {print $5, $6, $8}' \
  | sort -u > "$tmp/static-syms"
n_et=$(awk '$3 ~ /^et_/' "$tmp/static-syms" | wc -l)
echo "static: global defined symbols: $n_et et_*; beyond et_* (binding, visibility, count):"
awk '$3 !~ /^et_/ {print "    ", $1, $2}' "$tmp/static-syms" | sort | uniq -c
strong=$(awk '$3 !~ /^et_/ && $1 == "GLOBAL" {print $3}' "$tmp/static-syms" | c++filt)
echo "static: strong (non-weak) symbols beyond et_* (could clash with a consumer's own names):"
if [ -n "$strong" ]; then echo "$strong" | sed 's/^/     /'; else echo "     none"; fi
bad=$(echo "$strong" | grep -v -E '^(et::|eventtracker::|typeinfo|vtable|guard variable|$)' || true)
[ -z "$bad" ] || { echo "FAIL: the static archive defines symbols outside et_* / et:: / eventtracker::"; echo "$bad"; exit 1; }

# ==== c. add_subdirectory, the SDK's default options, GTest hidden ====
for kind in static shared; do
  sub=$work/sub-$kind
  args=(-DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON)
  [ $kind = shared ] && args+=(-DBUILD_SHARED_LIBS=ON)
  configure "$sub" "$work/sub" "${args[@]}"
  grep -q '^EVENTTRACKER_BUILD_TESTS:BOOL=OFF' "$sub/CMakeCache.txt" || { echo "FAIL: tests on for a subproject"; exit 1; }
  grep -q '^EVENTTRACKER_BUILD_EXAMPLES:BOOL=OFF' "$sub/CMakeCache.txt" || { echo "FAIL: examples on for a subproject"; exit 1; }
  quiet "$cmake" --build "$sub" -j"$jobs"
  if [ $kind = static ]; then
    ls "$sub"/eventtracker/libeventtracker.a >/dev/null
    if ldd "$sub/sub_consumer" | grep -q eventtracker; then echo "FAIL: sub_consumer loads a libeventtracker"; exit 1; fi
  else
    ldd "$sub/sub_consumer" | grep -q 'libeventtracker.so.1 => /' || { echo "FAIL: sub_consumer has no libeventtracker.so.1"; exit 1; }
  fi
  "$sub/sub_consumer"
  "$sub/sub_consumer_c"
  echo "add_subdirectory consumer ($kind, tests and examples off, GTest hidden) ok"
done

# ==== d. sizes ====
shared_lib=$lib
case "$shared_lib" in *.so|*.so.*) ;; *) shared_lib=$(ls "$work"/sub-shared/eventtracker/libeventtracker.so.*.*.* | head -1) ;; esac
strip --strip-unneeded -o "$tmp/shared.stripped" "$shared_lib"
strip --strip-debug -o "$tmp/static.stripped" "$archive"
echo "sizes ($build_type, $("$cxx" --version | head -1)):" \
  "shared $(basename "$shared_lib") $(size_of "$shared_lib") B, stripped $(size_of "$tmp/shared.stripped") B;" \
  "static libeventtracker.a $(size_of "$archive") B, stripped of debug info $(size_of "$tmp/static.stripped") B"
echo "PASS packaging"
