# Writes OUT: a C header defining `static const char hm_cl_source[]` with the bytes of IN and
# a terminating NUL (the OpenCL C source of the opencl backend, compiled in at build time).
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE "${OUT}.tmp" "/* generated from opencl_kernels.cl by embed_cl.cmake: do not edit */\nstatic const char hm_cl_source[] = {\n${bytes}0x00};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
