# The cuda device backend's toolchain. HETMIX_CUDA=AUTO builds the backend when nvcc and the
# CUDA toolkit (cudart, cuBLAS) are found, ON requires them, OFF leaves the backend out (its
# tests then skip, exit 77). The language is enabled here, at the top level, because the
# backend's kernels are compiled into the one hetmix library every program links.
# CMAKE_CUDA_ARCHITECTURES defaults to 90 (H100/H200); pass e.g. -DCMAKE_CUDA_ARCHITECTURES=80
# for A100, or "80;90" for both (each one adds to the build time).
set(HM_CUDA_OK OFF)
if(NOT HETMIX_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit QUIET)
  endif()
  if(CMAKE_CUDA_COMPILER AND CUDAToolkit_FOUND AND TARGET CUDA::cublas)
    set(HM_CUDA_OK ON)
  elseif(HETMIX_CUDA STREQUAL "ON")
    message(FATAL_ERROR "HETMIX_CUDA=ON but nvcc (${CMAKE_CUDA_COMPILER}) or the CUDA toolkit "
                        "(found: ${CUDAToolkit_FOUND}) is missing: install the CUDA toolkit or "
                        "configure with -DHETMIX_CUDA=OFF")
  endif()
endif()
if(HM_CUDA_OK)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  # warnings are errors in device and host code alike
  set(HM_CUDA_FLAGS --Werror all-warnings -Xcompiler=-Wall,-Wextra,-Werror)
  message(STATUS "cuda backend: on (CUDA ${CUDAToolkit_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "cuda backend: off (HETMIX_CUDA=${HETMIX_CUDA}; needs nvcc and the CUDA toolkit)")
endif()
