// recon-dec: patch 0006's im2col / col2im paths against Caffe's N-d ones,
// which it leaves as they were. im2col_rows_cpu (a block of output rows;
// for unit strides and "same" width, one shifted copy per kernel offset)
// gives exactly im2col_nd_cpu's columns; col2im_rows_add_cpu, called on row
// blocks from the last to the first, gives exactly col2im_nd_cpu's sums
// (the same additions in the same order for every input value), and
// col2im_cpu's. Shapes: 3x3 pad 1 (the fast paths), with dilation 2, 5x5
// pad 2, 3x3 pad 0, strides 2 and 3 (the general loops), 1 to 3 channels,
// widths 1 to 9.
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/util/im2col.hpp"

#include "caffe/test/test_caffe_main.hpp"

namespace caffe {

struct Im2colShape {
  int channels, height, width, kernel, pad, stride, dilation;
};

template <typename Dtype>
class Im2colRowsTest : public CPUDeviceTest<Dtype> {
 protected:
  void Check(const Im2colShape& s) {
    const int ext = s.dilation * (s.kernel - 1) + 1;
    const int out_h = (s.height + 2 * s.pad - ext) / s.stride + 1;
    const int out_w = (s.width + 2 * s.pad - ext) / s.stride + 1;
    const int rows = s.channels * s.kernel * s.kernel;
    Blob<Dtype> image(1, s.channels, s.height, s.width);
    Blob<Dtype> columns(1, rows, out_h, out_w);
    FillerParameter filler_param;
    filler_param.set_std(1);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(&image);
    filler.Fill(&columns);
    const int im_shape[3] = {s.channels, s.height, s.width};
    const int col_shape[3] = {rows, out_h, out_w};
    const int kernel[2] = {s.kernel, s.kernel}, pad[2] = {s.pad, s.pad};
    const int stride[2] = {s.stride, s.stride};
    const int dilation[2] = {s.dilation, s.dilation};
    const int plane = out_h * out_w;
    std::vector<Dtype> nd_col(rows * plane), nd_im(image.count());
    im2col_nd_cpu(image.cpu_data(), 2, im_shape, col_shape, kernel, pad,
        stride, dilation, &nd_col[0]);
    col2im_nd_cpu(columns.cpu_data(), 2, im_shape, col_shape, kernel, pad,
        stride, dilation, &nd_im[0]);
    std::vector<Dtype> up_im(image.count());
    col2im_cpu(columns.cpu_data(), s.channels, s.height, s.width, s.kernel,
        s.kernel, s.pad, s.pad, s.stride, s.stride, s.dilation, s.dilation,
        &up_im[0]);
    for (int block = 1; block <= out_h; ++block) {
      // im2col, a block of output rows at a time
      std::vector<Dtype> col(rows * block * out_w);
      for (int r0 = 0; r0 < out_h; r0 += block) {
        const int r1 = std::min(out_h, r0 + block), n = (r1 - r0) * out_w;
        im2col_rows_cpu(image.cpu_data(), s.channels, s.height, s.width,
            s.kernel, s.kernel, s.pad, s.pad, s.stride, s.stride, s.dilation,
            s.dilation, r0, r1, &col[0]);
        for (int k = 0; k < rows; ++k) {
          for (int i = 0; i < n; ++i) {
            ASSERT_EQ(nd_col[k * plane + r0 * out_w + i], col[k * n + i])
                << "im2col, block " << block << ", row " << k << ", " << i;
          }
        }
      }
      // col2im, the blocks from the last to the first
      std::vector<Dtype> im(image.count(), Dtype(0));
      for (int r0 = (out_h - 1) / block * block; r0 >= 0; r0 -= block) {
        const int r1 = std::min(out_h, r0 + block), n = (r1 - r0) * out_w;
        for (int k = 0; k < rows; ++k) {
          for (int i = 0; i < n; ++i) {
            col[k * n + i] = columns.cpu_data()[k * plane + r0 * out_w + i];
          }
        }
        col2im_rows_add_cpu(&col[0], s.channels, s.height, s.width,
            s.kernel, s.kernel, s.pad, s.pad, s.stride, s.stride, s.dilation,
            s.dilation, r0, r1, &im[0]);
      }
      for (int i = 0; i < image.count(); ++i) {
        ASSERT_EQ(nd_im[i], im[i]) << "col2im, block " << block << ": " << i;
        ASSERT_EQ(up_im[i], im[i]) << "col2im, block " << block << ": " << i;
      }
    }
  }
};

TYPED_TEST_CASE(Im2colRowsTest, TestDtypes);

TYPED_TEST(Im2colRowsTest, RowsMatchNd) {
  const Im2colShape shapes[] = {
    {2, 7, 6, 3, 1, 1, 1}, {3, 8, 8, 3, 1, 1, 1}, {1, 5, 1, 3, 1, 1, 1},
    {2, 9, 7, 3, 2, 1, 2}, {2, 6, 9, 5, 2, 1, 1}, {2, 7, 6, 3, 0, 1, 1},
    {2, 9, 8, 3, 1, 2, 1}, {1, 9, 9, 3, 1, 3, 1}, {2, 4, 5, 1, 0, 1, 1},
  };
  for (int i = 0; i < sizeof(shapes) / sizeof(shapes[0]); ++i) {
    SCOPED_TRACE(i);
    this->Check(shapes[i]);
  }
}

}  // namespace caffe
