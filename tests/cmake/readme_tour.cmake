# SPDX-License-Identifier: MIT
# Checks that the API tour in README.md is examples/api_tour.cpp, verbatim.
file(READ "${SOURCE_DIR}/README.md" readme)
file(READ "${SOURCE_DIR}/examples/api_tour.cpp" tour)
string(FIND "${readme}" "<!-- tour:begin -->\n```cpp\n${tour}```\n<!-- tour:end -->" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md's API tour differs from examples/api_tour.cpp; copy the file into the block between the tour markers")
endif()
