// SPDX-License-Identifier: MIT
// Proves the harness itself: this trivial valid program must build, so the harness can report success.
int main() { return 0; }
