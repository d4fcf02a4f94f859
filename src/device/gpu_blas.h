/* The BLAS half of gpu_compat.h: cuBLAS names for CUDA, hipBLAS for HIP (HETMIX_HIP). */
#ifndef HETMIX_GPU_BLAS_H
#define HETMIX_GPU_BLAS_H

#include "device/gpu_compat.h"

#if defined(HETMIX_HIP)
#include <hipblas/hipblas.h>

typedef hipblasHandle_t gpublasHandle_t;
typedef hipblasStatus_t gpublasStatus_t;
#define GPUBLAS_STATUS_SUCCESS HIPBLAS_STATUS_SUCCESS
#define GPUBLAS_OP_N HIPBLAS_OP_N
#define GPUBLAS_OP_T HIPBLAS_OP_T
#define gpublasCreate hipblasCreate
#define gpublasDestroy hipblasDestroy
#define gpublasSetStream hipblasSetStream
#define gpublasSgemm hipblasSgemm
#define gpublasSgemmStridedBatched hipblasSgemmStridedBatched
/* hipBLAS has no TF32 switch: f32 GEMMs stay f32 */
#define gpublasAllowTF32(handle, on) ((void)(handle), (void)(on), GPUBLAS_STATUS_SUCCESS)

#else /* CUDA */
#include <cublas_v2.h>

typedef cublasHandle_t gpublasHandle_t;
typedef cublasStatus_t gpublasStatus_t;
#define GPUBLAS_STATUS_SUCCESS CUBLAS_STATUS_SUCCESS
#define GPUBLAS_OP_N CUBLAS_OP_N
#define GPUBLAS_OP_T CUBLAS_OP_T
#define gpublasCreate cublasCreate
#define gpublasDestroy cublasDestroy
#define gpublasSetStream cublasSetStream
#define gpublasSgemm cublasSgemm
#define gpublasSgemmStridedBatched cublasSgemmStridedBatched
#define gpublasAllowTF32(handle, on) \
  cublasSetMathMode((handle), (on) ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH)
#endif

#endif
