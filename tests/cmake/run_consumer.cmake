# Builds and runs tests/cmake/consumer against postbox, as ctest's
# "cmake: ..." tests. MODE=installed: install this build into a prefix, then
# find_package(postbox) from it, and compile once more with pkg-config.
# MODE=subdirectory: add_subdirectory of the source tree.
file(REMOVE_RECURSE ${WORK_DIR})
set(consumer_src ${SOURCE_DIR}/tests/cmake/consumer)

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}\n${out}")
  endif()
endfunction()

if(MODE STREQUAL "installed")
  set(prefix ${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${prefix})
  run(${CMAKE_COMMAND} -S ${consumer_src} -B ${WORK_DIR}/build -DCMAKE_PREFIX_PATH=${prefix})
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/build -j 2)
  run(${WORK_DIR}/build/consumer)
  # pkg-config: the same program, compiled by hand from the .pc file.
  file(GLOB pc_dir ${prefix}/lib*/pkgconfig ${prefix}/lib/*/pkgconfig)
  set(ENV{PKG_CONFIG_PATH} "${pc_dir}")
  execute_process(COMMAND pkg-config --cflags --libs postbox OUTPUT_VARIABLE flags
                  RESULT_VARIABLE rc OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "pkg-config does not know postbox (PKG_CONFIG_PATH=${pc_dir})")
  endif()
  separate_arguments(flags UNIX_COMMAND "${flags}")
  run(c++ ${consumer_src}/main.cpp -o ${WORK_DIR}/consumer-pc ${flags})
  run(${WORK_DIR}/consumer-pc)
elseif(MODE STREQUAL "subdirectory")
  run(${CMAKE_COMMAND} -S ${consumer_src} -B ${WORK_DIR}/build -DPOSTBOX_SOURCE_DIR=${SOURCE_DIR})
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/build -j 2)
  run(${WORK_DIR}/build/consumer)
else()
  message(FATAL_ERROR "MODE must be installed or subdirectory")
endif()
