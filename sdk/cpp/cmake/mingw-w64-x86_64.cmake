# CMake toolchain file: cross-build for Windows x86-64 with Debian's MinGW-w64 (posix threads) and run the
# target's programs (try_run, ctest, gtest_discover_tests) under Wine.
#
# Usage (scripts/setup installs the packages; scripts/mingw-deps builds SQLite and GoogleTest into the prefix):
#   cmake -S sdk/cpp -B target/sdk-cpp-mingw \
#     -DCMAKE_TOOLCHAIN_FILE=sdk/cpp/cmake/mingw-w64-x86_64.cmake \
#     -DET_MINGW_PREFIX=<checkout>/.data/mingw-x86_64 -DET_WINEPREFIX=<checkout>/.data/wine
#
# Cache variables (each also read from the environment variable of the same name at first configure):
#   ET_MINGW_PREFIX  prefix holding the target's third-party libraries (SQLite, GoogleTest); searched
#                    along with /usr/x86_64-w64-mingw32 (MinGW-w64 runtime, Debian's libz-mingw-w64-dev).
#   ET_WINE          the Wine loader used as CMAKE_CROSSCOMPILING_EMULATOR (default /usr/lib/wine/wine64).
#   ET_WINEPREFIX    the Wine prefix the emulator uses (empty: Wine's default, ~/.wine). Its first use
#                    creates it (a few seconds, ~700 MB).
# The emulator runs `cmake -E env WINEDEBUG=-all [WINEPREFIX=...] --unset=http_proxy ... <ET_WINE>`, so ctest
# needs no environment. (Wine's WinHTTP, unlike Windows', takes its default proxy from http_proxy and ignores
# no_proxy, which would send requests for 127.0.0.1 to the proxy.)
#
# Speed: a Wine process whose stderr is a pipe (ctest, $(...)) passes that pipe to the background processes
# Wine starts (wineserver, services.exe, explorer.exe), so the reader waits until they exit, ~2.5 s after the
# last program: every test then costs a cold start. Start them first, away from the pipe, and stop them after:
#   export WINEPREFIX=... WINEDEBUG=-all
#   /usr/lib/wine/wineserver64 -p </dev/null >/dev/null 2>&1; /usr/lib/wine/wine64 wineboot </dev/null >/dev/null 2>&1
#   ctest ...; /usr/lib/wine/wineserver64 -k
# (a test process then starts in ~0.1 s instead of ~2.6 s).
#
# Executables and DLLs are linked with -static: libgcc, libstdc++ and winpthread are linked in, so the
# binaries need only Windows' own DLLs (under Wine too). zlib is found as the static libz.a
# (ZLIB_USE_STATIC_LIBS, CMake >= 3.24; pass -DZLIB_USE_STATIC_LIBS=OFF for zlib1.dll).

set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(_et_triple x86_64-w64-mingw32)
set(CMAKE_C_COMPILER ${_et_triple}-gcc-posix)
set(CMAKE_CXX_COMPILER ${_et_triple}-g++-posix)
set(CMAKE_RC_COMPILER ${_et_triple}-windres)
set(CMAKE_AR ${_et_triple}-ar CACHE FILEPATH "")
set(CMAKE_RANLIB ${_et_triple}-ranlib CACHE FILEPATH "")

foreach(_et_var ET_MINGW_PREFIX ET_WINE ET_WINEPREFIX)
  if(NOT DEFINED ${_et_var} AND DEFINED ENV{${_et_var}})
    set(${_et_var} "$ENV{${_et_var}}")
  endif()
endforeach()
if(NOT DEFINED ET_WINE)
  set(ET_WINE /usr/lib/wine/wine64)
endif()
set(ET_MINGW_PREFIX "${ET_MINGW_PREFIX}" CACHE PATH "Prefix with the target's third-party libraries")
set(ET_WINE "${ET_WINE}" CACHE FILEPATH "Wine loader used to run target programs")
set(ET_WINEPREFIX "${ET_WINEPREFIX}" CACHE PATH "Wine prefix for running target programs (empty: ~/.wine)")
# try_compile/try_run projects read this file again: hand them the same values.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES ET_MINGW_PREFIX ET_WINE ET_WINEPREFIX)

set(CMAKE_FIND_ROOT_PATH /usr/${_et_triple})
if(ET_MINGW_PREFIX)
  list(APPEND CMAKE_FIND_ROOT_PATH "${ET_MINGW_PREFIX}")
endif()
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# pkg-config (FindPkgConfig at configure time) sees the target's .pc files only.
set(_et_pc_path /usr/${_et_triple}/lib/pkgconfig)
if(ET_MINGW_PREFIX)
  set(_et_pc_path "${ET_MINGW_PREFIX}/lib/pkgconfig:${_et_pc_path}")
endif()
set(ENV{PKG_CONFIG_LIBDIR} "${_et_pc_path}")
unset(ENV{PKG_CONFIG_PATH})

if(NOT DEFINED ZLIB_USE_STATIC_LIBS)
  set(ZLIB_USE_STATIC_LIBS ON)
endif()

set(CMAKE_EXE_LINKER_FLAGS_INIT -static)
set(CMAKE_SHARED_LINKER_FLAGS_INIT -static)
set(CMAKE_MODULE_LINKER_FLAGS_INIT -static)

set(_et_emulator ${CMAKE_COMMAND} -E env WINEDEBUG=-all --unset=http_proxy --unset=https_proxy
  --unset=HTTP_PROXY --unset=HTTPS_PROXY)
if(ET_WINEPREFIX)
  list(APPEND _et_emulator "WINEPREFIX=${ET_WINEPREFIX}")
endif()
list(APPEND _et_emulator "${ET_WINE}")
set(CMAKE_CROSSCOMPILING_EMULATOR "${_et_emulator}")
