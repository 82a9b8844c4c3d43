# Finds msgpack-c's C++ part (header-only) as the target msgpackc-cxx.
# Debian installs two packages whose config files are both named
# msgpack-config.cmake (the C library's under cmake/msgpack, the C++ one's
# under cmake/msgpackc-cxx), so the C++ directory is searched first.
if(NOT TARGET msgpackc-cxx)
  set(_postbox_msgpack_hints)
  foreach(_prefix ${CMAKE_PREFIX_PATH} ${CMAKE_SYSTEM_PREFIX_PATH})
    list(APPEND _postbox_msgpack_hints
      ${_prefix}/lib/${CMAKE_LIBRARY_ARCHITECTURE}/cmake/msgpackc-cxx
      ${_prefix}/lib/cmake/msgpackc-cxx)
  endforeach()
  find_package(msgpack CONFIG QUIET NAMES msgpack HINTS ${_postbox_msgpack_hints})
  if(NOT TARGET msgpackc-cxx)
    message(FATAL_ERROR "postbox needs msgpack-c's C++ headers (Debian: libmsgpack-cxx-dev)")
  endif()
endif()
