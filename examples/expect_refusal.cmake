# Runs PROGRAM with a stray argument: it must exit 2 and print exactly one
# line on stderr, naming the argument, and nothing on stdout.
execute_process(COMMAND ${PROGRAM} --frobnicate RESULT_VARIABLE rc OUTPUT_VARIABLE out
                ERROR_VARIABLE err TIMEOUT 10)
string(REGEX MATCHALL "\n" lines "${err}")
list(LENGTH lines line_count)
if(NOT rc EQUAL 2)
  message(FATAL_ERROR "exit ${rc}, expected 2; stderr: ${err}")
endif()
if(NOT line_count EQUAL 1 OR NOT err MATCHES "unexpected argument \"--frobnicate\"")
  message(FATAL_ERROR "stderr is not one line naming the argument: ${err}")
endif()
if(NOT out STREQUAL "")
  message(FATAL_ERROR "stdout is not empty: ${out}")
endif()
