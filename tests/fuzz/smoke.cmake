# SPDX-License-Identifier: MIT
# One smoke run of a fuzz target, as a ctest test (tests/fuzz/CMakeLists.txt):
#   cmake -DFUZZER=path -DNAME=fuzz_x -DWORK=dir -DSECONDS=20 -DMAX_LEN=n -DCORPORA="dir;dir" -P smoke.cmake
# New inputs go to WORK/corpus/NAME (the seed folders are only read), crashers to
# WORK/artifacts/NAME/ (copy them to tests/fuzz/regressions/<target>/ once understood).
foreach(v FUZZER NAME WORK SECONDS MAX_LEN)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "smoke.cmake: -D${v}= is required")
  endif()
endforeach()
set(corpus "${WORK}/corpus/${NAME}")
set(artifacts "${WORK}/artifacts/${NAME}/")
file(MAKE_DIRECTORY "${corpus}" "${artifacts}")
set(dirs "${corpus}")
foreach(d IN LISTS CORPORA)
  if(IS_DIRECTORY "${d}")
    list(APPEND dirs "${d}")
  endif()
endforeach()
execute_process(
  COMMAND "${FUZZER}" -max_total_time=${SECONDS} -timeout=10 -rss_limit_mb=2048 -max_len=${MAX_LEN}
          -print_final_stats=1 -artifact_prefix=${artifacts} ${dirs}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NAME} failed (exit ${rc}); the input is in ${artifacts}")
endif()
