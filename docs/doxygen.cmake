# SPDX-License-Identifier: MIT
# Runs doxygen with docs/Doxyfile, writing into a build directory (the `docs` target and the
# test "docs: doxygen builds without warnings", docs/CMakeLists.txt).
#
#   cmake -DDOXYGEN=<doxygen> -DSOURCE_DIR=<source tree> -DOUTPUT_DIR=<dir> [-DVERSION=x.y.z]
#         [-DFAIL_ON_WARNINGS=ON] -P doxygen.cmake
#
# The HTML goes to OUTPUT_DIR/html and the warnings to OUTPUT_DIR/warnings.log. With
# FAIL_ON_WARNINGS, any warning fails the run (and is printed).
foreach(var DOXYGEN SOURCE_DIR OUTPUT_DIR)
  if(NOT ${var})
    message(FATAL_ERROR "doxygen.cmake: pass -D${var}=...")
  endif()
endforeach()
file(MAKE_DIRECTORY "${OUTPUT_DIR}")
file(READ "${SOURCE_DIR}/docs/Doxyfile" doxyfile)
# Later settings win: point the output into the build tree, keep everything else.
string(APPEND doxyfile "\nOUTPUT_DIRECTORY = \"${OUTPUT_DIR}\"\nWARN_LOGFILE = \"${OUTPUT_DIR}/warnings.log\"\n")
if(VERSION)
  string(APPEND doxyfile "PROJECT_NUMBER = ${VERSION}\n")
endif()
if(FAIL_ON_WARNINGS)
  # Doxygen's own verdict too: it finishes the run, then exits with 1 if it warned.
  string(APPEND doxyfile "WARN_AS_ERROR = FAIL_ON_WARNINGS\n")
endif()
file(WRITE "${OUTPUT_DIR}/Doxyfile" "${doxyfile}")
file(REMOVE "${OUTPUT_DIR}/warnings.log")
execute_process(COMMAND "${DOXYGEN}" "${OUTPUT_DIR}/Doxyfile" WORKING_DIRECTORY "${SOURCE_DIR}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 AND NOT (FAIL_ON_WARNINGS AND EXISTS "${OUTPUT_DIR}/warnings.log"))
  message(FATAL_ERROR "doxygen failed (${rc}):\n${out}${err}")
endif()
set(warnings "")
if(EXISTS "${OUTPUT_DIR}/warnings.log")
  file(READ "${OUTPUT_DIR}/warnings.log" warnings)
endif()
string(STRIP "${warnings}${err}" warnings)
if(warnings STREQUAL "" AND NOT rc EQUAL 0)
  message(FATAL_ERROR "doxygen failed (${rc}) without a warning:\n${out}")
elseif(warnings STREQUAL "")
  message(STATUS "doxygen: no warnings; HTML in ${OUTPUT_DIR}/html/index.html")
elseif(FAIL_ON_WARNINGS)
  message(NOTICE "${warnings}")
  message(FATAL_ERROR "doxygen warned (above, and in ${OUTPUT_DIR}/warnings.log): every public entity needs a `///` "
                      "brief, and every documented parameter list must be complete")
else()
  message(NOTICE "${warnings}")
  message(WARNING "doxygen warned (see ${OUTPUT_DIR}/warnings.log)")
endif()
