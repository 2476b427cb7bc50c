# SPDX-License-Identifier: MIT
# Consumer test without CMake: compiles and runs a program with the flags `pkg-config qcow2` gives.
#   cmake -DPKG_CONFIG=<pkg-config> -DPREFIX=<prefix> -DCXX=<compiler> -DCXXFLAGS=<flags>
#         -DSOURCE=<consumer_main.cpp> -DOUTPUT=<executable> -P pkg_config.cmake
set(ENV{PKG_CONFIG_PATH} "${PREFIX}/share/pkgconfig")
set(ENV{PKG_CONFIG_LIBDIR} "${PREFIX}/share/pkgconfig")
execute_process(COMMAND "${PKG_CONFIG}" --cflags --libs qcow2
  OUTPUT_VARIABLE flags OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags --libs qcow2 failed (${rc})")
endif()
message(STATUS "pkg-config qcow2: ${flags}")
separate_arguments(flags UNIX_COMMAND "${flags}")
separate_arguments(cxxflags UNIX_COMMAND "${CXXFLAGS}")
get_filename_component(dir "${OUTPUT}" DIRECTORY)
file(MAKE_DIRECTORY "${dir}")
execute_process(COMMAND "${CXX}" -std=c++20 ${cxxflags} "${SOURCE}" -o "${OUTPUT}" ${flags} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "compiling ${SOURCE} with the pkg-config flags failed (${rc})")
endif()
execute_process(COMMAND "${OUTPUT}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${OUTPUT} failed (${rc})")
endif()
