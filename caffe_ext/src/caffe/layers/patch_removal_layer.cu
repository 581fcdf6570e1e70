#include <vector>

#include "caffe/layers/patch_removal_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// Whether flat index `index` of an N x C x H x W blob lies in its image's
// patch (top-left corner positions[2n], positions[2n + 1]).
__device__ inline bool InPatch(const int index, const int channels,
    const int height, const int width, const int size,
    const int* positions) {
  const int w = index % width;
  const int h = (index / width) % height;
  const int n = index / width / height / channels;
  const int y = positions[2 * n], x = positions[2 * n + 1];
  return h >= y && h < y + size && w >= x && w < x + size;
}

// One thread per value; channel 0's threads also write the mask.
template <typename Dtype>
__global__ void PatchRemovalForward(const int nthreads, const Dtype* in,
    const int* positions, const int channels, const int height,
    const int width, const int size, const Dtype fill, Dtype* out,
    Dtype* mask) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const bool inside = InPatch(index, channels, height, width, size,
                                positions);
    out[index] = inside ? fill : in[index];
    const int plane = height * width;
    if (mask && (index / plane) % channels == 0) {
      mask[index / plane / channels * plane + index % plane] = inside;
    }
  }
}

template <typename Dtype>
__global__ void PatchRemovalBackward(const int nthreads, const Dtype* top_diff,
    const int* positions, const int channels, const int height,
    const int width, const int size, Dtype* diff) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    diff[index] = InPatch(index, channels, height, width, size, positions)
        ? Dtype(0) : top_diff[index];
  }
}

template <typename Dtype>
void PatchRemovalLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  PlacePatches();  // N positions: drawn on the host, copied over
  const int nthreads = bottom[0]->count();
  // NOLINT_NEXT_LINE(whitespace/operators)
  PatchRemovalForward<Dtype><<<CAFFE_GET_BLOCKS(nthreads),
      CAFFE_CUDA_NUM_THREADS>>>(nthreads, bottom[0]->gpu_data(),
      positions_.gpu_data(), channels_, height_, width_, size_, fill_,
      top[0]->mutable_gpu_data(),
      top.size() > 1 ? top[1]->mutable_gpu_data() : NULL);
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void PatchRemovalLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  const int nthreads = bottom[0]->count();
  // NOLINT_NEXT_LINE(whitespace/operators)
  PatchRemovalBackward<Dtype><<<CAFFE_GET_BLOCKS(nthreads),
      CAFFE_CUDA_NUM_THREADS>>>(nthreads, top[0]->gpu_diff(),
      positions_.gpu_data(), channels_, height_, width_, size_,
      bottom[0]->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(PatchRemovalLayer);

}  // namespace caffe
