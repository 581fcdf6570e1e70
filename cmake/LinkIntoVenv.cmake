# Makes the built Caffe usable from the venv with no manual PYTHONPATH:
# a .pth file puts Caffe's python/ on sys.path, and the caffe tool (and the
# other Caffe tools) are linked into the venv's bin/.
execute_process(COMMAND ${PYTHON} -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"
                OUTPUT_VARIABLE site OUTPUT_STRIP_TRAILING_WHITESPACE)
get_filename_component(venv_bin ${PYTHON} DIRECTORY)
file(WRITE ${site}/recon_dec_caffe.pth "${CAFFE_SRC_DIR}/python\n")
foreach(tool caffe upgrade_net_proto_text upgrade_net_proto_binary upgrade_solver_proto_text
             convert_imageset compute_image_mean extract_features)
  if(EXISTS ${CAFFE_BUILD_DIR}/tools/${tool})
    file(CREATE_LINK ${CAFFE_BUILD_DIR}/tools/${tool} ${venv_bin}/${tool} SYMBOLIC)
  endif()
endforeach()
if(EXISTS ${CAFFE_BUILD_DIR}/test/test.testbin)
  file(CREATE_LINK ${CAFFE_BUILD_DIR}/test/test.testbin ${venv_bin}/caffe-gtest SYMBOLIC)
endif()
