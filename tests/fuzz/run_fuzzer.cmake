# Runs the fuzzer for SECONDS from a fresh copy of the seed corpus; fails on any finding.
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/corpus" "${WORK}/artifacts")
file(GLOB seeds "${SEEDS}/*")
file(COPY ${seeds} DESTINATION "${WORK}/corpus")
execute_process(
  COMMAND "${FUZZER}" -max_total_time=${SECONDS} -timeout=10 -rss_limit_mb=2048 -max_len=65536
          -artifact_prefix=${WORK}/artifacts/ -print_final_stats=1 "${WORK}/corpus"
  RESULT_VARIABLE status)
if(NOT status EQUAL 0)
  message(FATAL_ERROR "fuzzer failed (exit ${status}); the input that broke it is in ${WORK}/artifacts")
endif()
