# SPDX-License-Identifier: MIT
# Consumer test without any build system: a program that only adds single_include/ to its
# include path, compiled and run with a plain compiler command (no flags of this build).
#   cmake -DCXX=<compiler> -DSOURCE_DIR=<qcow2 source tree> -DOUTPUT=<executable> -P single_header.cmake
#
# The header chooses its codecs with __has_include; the program must then link their
# libraries, so ask the header (through the preprocessor) which ones it chose.
foreach(var CXX SOURCE_DIR OUTPUT)
  if(NOT ${var})
    message(FATAL_ERROR "single_header.cmake: pass -D${var}=...")
  endif()
endforeach()
get_filename_component(dir "${OUTPUT}" DIRECTORY)
file(MAKE_DIRECTORY "${dir}")
set(include "-I${SOURCE_DIR}/single_include")
file(WRITE "${dir}/probe.cpp" "#include <qcow2/qcow2.hpp>\n")
execute_process(COMMAND "${CXX}" -std=c++20 "${include}" -E -dM "${dir}/probe.cpp"
  OUTPUT_VARIABLE macros RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "preprocessing <qcow2/qcow2.hpp> failed (${rc}):\n${err}")
endif()
set(libs "")
foreach(codec "ZLIB;z" "ZSTD;zstd" "LIBDEFLATE;deflate")
  list(GET codec 0 name)
  list(GET codec 1 lib)
  if(macros MATCHES "#define QCOW2_HAS_${name} 1")
    list(APPEND libs "-l${lib}")
  endif()
endforeach()
set(command "${CXX}" -std=c++20 "${include}" "${SOURCE_DIR}/tests/cmake/single_header_main.cpp" -o "${OUTPUT}" ${libs})
list(JOIN command " " shown)
message(STATUS "${shown}")
execute_process(COMMAND ${command} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "compiling with only the single header failed (${rc}): ${shown}")
endif()
execute_process(COMMAND "${OUTPUT}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${OUTPUT} failed (${rc})")
endif()
