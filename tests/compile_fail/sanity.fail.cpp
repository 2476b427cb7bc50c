// SPDX-License-Identifier: MIT
// Proves the harness itself: this file has an obvious type error, so its test passes only if the build fails.
int main() {
    int x = "not an int";
    return x;
}
