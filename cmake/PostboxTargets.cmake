# Helpers that give postbox's own targets their warnings and sanitizers.
# Nothing here touches global flags: each target opts in.

macro(postbox_find_dependencies)
  find_package(cppzmq REQUIRED)
  include(PostboxFindMsgpack)
endmacro()

# Warnings (errors with POSTBOX_WARNINGS_AS_ERRORS) and POSTBOX_SANITIZE.
function(postbox_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wconversion
    -Wno-sign-conversion -Wnon-virtual-dtor -Wold-style-cast -Woverloaded-virtual)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    # GCC 12 at -O3 reports std::string concatenation as overlapping memcpy
    # (GCC bug 105329, a false positive inside libstdc++).
    target_compile_options(${target} PRIVATE -Wno-restrict)
  endif()
  if(POSTBOX_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  postbox_target_sanitize(${target})
endfunction()

function(postbox_target_sanitize target)
  if(POSTBOX_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${POSTBOX_SANITIZE} -fno-omit-frame-pointer
      -fno-sanitize-recover=all)
    target_link_options(${target} PUBLIC -fsanitize=${POSTBOX_SANITIZE})
  endif()
endfunction()
