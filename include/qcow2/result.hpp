// SPDX-License-Identifier: MIT
/// @file
/// @brief `qcow2::result<T>`: a value or a `qcow2::error`.
///
/// The subset of C++23 `std::expected<T, qcow2::error>` the library needs, usable in
/// constant expressions and without exceptions. Failures convert implicitly, so a
/// function returning `result<T>` can `return error{errc::bad_magic, "..."};`.
#pragma once

#include "qcow2/config.hpp"
#include "qcow2/error.hpp"

#include <cstdlib>
#include <memory>
#include <type_traits>
#include <utility>

#if QCOW2_HAS_EXCEPTIONS
#include <system_error>
#endif

namespace qcow2 {

namespace detail {
[[noreturn]] inline void bad_result_access(const error& e) {
#if QCOW2_HAS_EXCEPTIONS
    throw std::system_error(e.code(), e.message());
#else
    (void)e;
    std::abort();
#endif
}
} // namespace detail

/// A value of type `T`, or the `error` that prevented it.
template <class T>
class [[nodiscard]] result {
    static_assert(!std::is_reference_v<T> && !std::is_same_v<std::remove_cv_t<T>, qcow2::error>);

public:
    /// The type of the value.
    using value_type = T;
    /// The type of the error.
    using error_type = qcow2::error;

    /// A result holding `v` (anything `T` can be made from).
    template <class U = T>
        requires std::is_constructible_v<T, U&&> && (!std::is_same_v<std::remove_cvref_t<U>, result>) &&
                 (!std::is_same_v<std::remove_cvref_t<U>, error_type>)
    constexpr result(U&& v) : ok_(true) {
        std::construct_at(&val_, std::forward<U>(v));
    }
    /// A failed result holding `e`; implicit, so that a function can `return error{...};`.
    constexpr result(error_type e) : ok_(false) { std::construct_at(&err_, std::move(e)); }

    /// Copies the value or the error.
    constexpr result(const result& o) : ok_(o.ok_) {
        if (ok_) std::construct_at(&val_, o.val_);
        else std::construct_at(&err_, o.err_);
    }
    /// Moves the value or the error.
    constexpr result(result&& o) noexcept(std::is_nothrow_move_constructible_v<T>) : ok_(o.ok_) {
        if (ok_) std::construct_at(&val_, std::move(o.val_));
        else std::construct_at(&err_, std::move(o.err_));
    }
    /// Replaces the value or error with `o`'s.
    constexpr result& operator=(result o) {
        destroy();
        ok_ = o.ok_;
        if (ok_) std::construct_at(&val_, std::move(o.val_));
        else std::construct_at(&err_, std::move(o.err_));
        return *this;
    }
    /// Destroys the value or the error.
    constexpr ~result() { destroy(); }

    /// True when the result holds a value.
    constexpr bool has_value() const noexcept { return ok_; }
    /// True when the result holds a value.
    constexpr explicit operator bool() const noexcept { return ok_; }

    /// The value; without one, throws `std::system_error` (or aborts without exceptions).
    /// @{
    constexpr T& value() & { check(); return val_; }
    constexpr const T& value() const& { check(); return val_; }
    constexpr T&& value() && { check(); return std::move(val_); }
    /// @}
    /// The value, unchecked: only valid when `has_value()`.
    /// @{
    constexpr T& operator*() & noexcept { return val_; }
    constexpr const T& operator*() const& noexcept { return val_; }
    constexpr T&& operator*() && noexcept { return std::move(val_); }
    constexpr T* operator->() noexcept { return &val_; }
    constexpr const T* operator->() const noexcept { return &val_; }
    /// @}

    /// The error; only valid when `!has_value()`.
    /// @{
    constexpr const error_type& error() const& noexcept { return err_; }
    constexpr error_type&& error() && noexcept { return std::move(err_); }
    /// @}

    /// The value, or `fallback` converted to `T` when there is none.
    template <class U>
    constexpr T value_or(U&& fallback) const& {
        return ok_ ? val_ : static_cast<T>(std::forward<U>(fallback));
    }

private:
    constexpr void check() const {
        if (!ok_) detail::bad_result_access(err_);
    }
    constexpr void destroy() {
        if (ok_) std::destroy_at(&val_);
        else std::destroy_at(&err_);
    }

    union {
        T val_;
        error_type err_;
    };
    bool ok_;
};

/// Success or an `error`, for operations without a value.
template <>
class [[nodiscard]] result<void> {
public:
    /// No value.
    using value_type = void;
    /// The type of the error.
    using error_type = qcow2::error;
    /// Success.
    constexpr result() noexcept = default;
    /// A failure holding `e`; implicit, so that a function can `return error{...};`.
    constexpr result(error_type e) : err_(std::move(e)), ok_(false) {}

    /// True on success.
    constexpr bool has_value() const noexcept { return ok_; }
    /// True on success.
    constexpr explicit operator bool() const noexcept { return ok_; }
    /// Does nothing on success; on failure throws `std::system_error` (or aborts without exceptions).
    constexpr void value() const {
        if (!ok_) detail::bad_result_access(err_);
    }
    /// The error; only valid when `!has_value()`.
    /// @{
    constexpr const error_type& error() const& noexcept { return err_; }
    constexpr error_type&& error() && noexcept { return std::move(err_); }
    /// @}

private:
    error_type err_{errc::invalid_argument, {}};
    bool ok_ = true;
};

/// Converts a backend's `std::error_code` into a result, adding what was being done.
inline result<void> check_io(std::error_code ec, std::string_view what) {
    if (!ec) return {};
    return error(ec, std::string(what));
}

} // namespace qcow2
