# Sourced by the GPU machine's scripts: puts the driver's libcuda and the CUDA 13 libraries the
# CUDA build links (cuBLAS, cuBLASLt, cuRAND, the runtime) on LD_LIBRARY_PATH, wherever the
# machine's image keeps them.
L=/usr/local/nvidia/lib64:/usr/local/cuda-13.0/lib64:/usr/local/cuda/lib64
for l in libcublas.so.13 libcurand.so.10 libcudart.so.13 libcublasLt.so.13; do
  f=$(find /usr/local /opt /usr/lib -name "$l*" 2>/dev/null | head -1)
  if [ -n "$f" ]; then L=$L:$(dirname "$f"); fi
done
export LD_LIBRARY_PATH=$L:${LD_LIBRARY_PATH:-}
