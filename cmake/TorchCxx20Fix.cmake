# LibTorch < 2.1 + clang in C++20 mode: ATen/core/List.h defines three inline
# members that use std::vector<IValue> while IValue is incomplete; C++20 makes
# those vector members constexpr and clang instantiates them eagerly. We write
# a copy of the installed header with those definitions moved below the
# header's own `#include <ATen/core/List_inl.h>` (where IValue is complete)
# and put its folder first on the include path. Nothing under /usr changes.
#
# modtracker_torch_cxx20_fix(<target> <overlay-dir>) adds the overlay to the
# INTERFACE include path of <target> (the imported `torch`) when needed.
function(modtracker_torch_cxx20_fix target overlay_dir)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    return()
  endif()
  if(DEFINED Torch_VERSION AND NOT Torch_VERSION VERSION_LESS 2.1)
    return()
  endif()
  set(header "")
  foreach(dir IN LISTS TORCH_INCLUDE_DIRS)
    if(EXISTS "${dir}/ATen/core/List.h")
      set(header "${dir}/ATen/core/List.h")
      break()
    endif()
  endforeach()
  if(NOT header)
    message(FATAL_ERROR "modtracker: cannot find ATen/core/List.h under TORCH_INCLUDE_DIRS (${TORCH_INCLUDE_DIRS}); is libtorch-dev installed?")
  endif()
  file(READ "${header}" text)

  set(ctor_old "  explicit ListImpl(list_type list_, TypePtr elementType_)\n  : list(std::move(list_))\n  , elementType(std::move(elementType_)) {}\n")
  set(ctor_new "  explicit ListImpl(list_type list_, TypePtr elementType_);\n")
  set(copy_old "  intrusive_ptr<ListImpl> copy() const {\n    return make_intrusive<ListImpl>(list, elementType);\n  }\n")
  set(copy_new "  intrusive_ptr<ListImpl> copy() const;\n")
  set(first_old "inline const IValue* ptr_to_first_element(const GenericList& list) {\n  return &list.impl_->list[0];\n}\n")
  set(first_new "inline const IValue* ptr_to_first_element(const GenericList& list);\n")
  set(anchor "#include <ATen/core/List_inl.h>  // IWYU pragma: keep\n")
  set(tail "${anchor}
// modtracker: definitions moved here from above, where IValue is complete.
namespace c10 {
namespace detail {
inline ListImpl::ListImpl(list_type list_, TypePtr elementType_)
  : list(std::move(list_)), elementType(std::move(elementType_)) {}
inline intrusive_ptr<ListImpl> ListImpl::copy() const {
  return make_intrusive<ListImpl>(list, elementType);
}
} // namespace detail
namespace impl {
inline const IValue* ptr_to_first_element(const GenericList& list) {
  return &list.impl_->list[0];
}
} // namespace impl
} // namespace c10
")
  foreach(part ctor copy first)
    string(FIND "${text}" "${${part}_old}" at)
    if(at EQUAL -1)
      message(FATAL_ERROR
        "modtracker: ${header} does not contain the definition this build must move "
        "(${part}); this LibTorch (${Torch_VERSION}) is not the 1.13 header the clang C++20 fix "
        "was written for. Use LibTorch >= 2.1, or GCC, or update cmake/TorchCxx20Fix.cmake.")
    endif()
    string(REPLACE "${${part}_old}" "${${part}_new}" text "${text}")
  endforeach()
  string(FIND "${text}" "${anchor}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "modtracker: ${header} lacks '#include <ATen/core/List_inl.h>'; cannot apply the clang C++20 fix.")
  endif()
  string(REPLACE "${anchor}" "${tail}" text "${text}")
  file(CONFIGURE OUTPUT "${overlay_dir}/ATen/core/List.h" CONTENT "${text}" @ONLY NEWLINE_STYLE UNIX)
  target_include_directories(${target} SYSTEM BEFORE INTERFACE "${overlay_dir}")
  set(MODTRACKER_TORCH_OVERLAY "${overlay_dir}" PARENT_SCOPE)
endfunction()
