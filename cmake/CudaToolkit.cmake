# Finds the CUDA toolkit Caffe's FindCUDA should use. CUDA 13 images often
# carry nvcc and cudart only; cuBLAS and cuRAND then come from NVIDIA's PyPI
# wheels (requirements-cuda.txt), which have no unversioned .so links. In that
# case a merged toolkit directory is assembled from symlinks:
#   build/cuda-toolkit/{bin,nvvm,...} -> /usr/local/cuda/...
#   build/cuda-toolkit/include/*       -> system headers + wheel headers
#   build/cuda-toolkit/lib64/*         -> system libs + wheel libs + libX.so links
function(recon_dec_cuda_toolkit out_var)
  if(RECON_DEC_CUDA_ROOT)
    set(${out_var} ${RECON_DEC_CUDA_ROOT} PARENT_SCOPE)
    return()
  endif()
  set(system /usr/local/cuda)
  if(NOT EXISTS ${system}/bin/nvcc)
    message(FATAL_ERROR "RECON_DEC_CUDA=ON but no nvcc in ${system}/bin; set RECON_DEC_CUDA_ROOT")
  endif()
  if(EXISTS ${system}/include/cublas_v2.h AND EXISTS ${system}/include/curand.h)
    set(${out_var} ${system} PARENT_SCOPE)
    return()
  endif()

  execute_process(
    COMMAND ${RECON_DEC_PYTHON} -c "import nvidia, os, glob; print(sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], 'cu1*')))[-1])"
    OUTPUT_VARIABLE wheel OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc ERROR_QUIET)
  if(NOT rc EQUAL 0 OR NOT EXISTS ${wheel}/include/cublas_v2.h OR NOT EXISTS ${wheel}/include/curand.h)
    message(FATAL_ERROR "${system} has no cuBLAS/cuRAND and the venv has no NVIDIA wheels providing them: "
                        "install requirements-cuda.txt into the venv (tools/setup.sh --cuda does)")
  endif()

  set(merged ${CMAKE_BINARY_DIR}/cuda-toolkit)
  file(REMOVE_RECURSE ${merged})
  file(MAKE_DIRECTORY ${merged}/include ${merged}/lib64)
  file(GLOB top RELATIVE ${system} ${system}/*)
  foreach(entry ${top})
    if(NOT entry MATCHES "^(include|lib|lib64)$")
      file(CREATE_LINK ${system}/${entry} ${merged}/${entry} SYMBOLIC)
    endif()
  endforeach()
  foreach(dir ${system}/include ${wheel}/include)
    file(GLOB entries ${dir}/*)
    foreach(e ${entries})
      get_filename_component(name ${e} NAME)
      file(CREATE_LINK ${e} ${merged}/include/${name} SYMBOLIC)
    endforeach()
  endforeach()
  foreach(dir ${system}/lib64 ${wheel}/lib)
    file(GLOB entries ${dir}/*)
    foreach(e ${entries})
      get_filename_component(name ${e} NAME)
      file(CREATE_LINK ${e} ${merged}/lib64/${name} SYMBOLIC)
      # libcublas.so.13 -> also libcublas.so, which FindCUDA looks for
      if(name MATCHES "^(lib[^.]+\\.so)\\.[0-9]+$")
        file(CREATE_LINK ${e} ${merged}/lib64/${CMAKE_MATCH_1} SYMBOLIC)
      endif()
    endforeach()
  endforeach()
  message(STATUS "recon-dec: merged CUDA toolkit ${merged} (${system} + ${wheel})")
  set(${out_var} ${merged} PARENT_SCOPE)
endfunction()

# cuDNN for RECON_DEC_CUDNN: RECON_DEC_CUDNN_ROOT if set ({include,lib} with
# cudnn.h and libcudnn.so*), else NVIDIA's wheel nvidia-cudnn-cu13 in the venv
# (requirements-cudnn.txt: site-packages/nvidia/cudnn/{include,lib}). The
# wheel has libcudnn.so.9 only, no unversioned link: Caffe is given that file.
# Its soname is all the build records; at run time the GPU machine's own
# cuDNN 9 wheel serves it (the GPU bundle never carries libcudnn*).
function(recon_dec_cudnn include_var library_var)
  set(root "${RECON_DEC_CUDNN_ROOT}")
  if(NOT root)
    execute_process(
      COMMAND ${RECON_DEC_PYTHON} -c "import nvidia, os; print([p for p in (os.path.join(d, 'cudnn') for d in nvidia.__path__) if os.path.isdir(p)][0])"
      OUTPUT_VARIABLE root OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc ERROR_QUIET)
    if(NOT rc EQUAL 0)
      set(root "")
    endif()
  endif()
  set(libs "")
  if(root)
    file(GLOB libs ${root}/lib/libcudnn.so ${root}/lib/libcudnn.so.[0-9] ${root}/lib/libcudnn.so.[0-9][0-9])
  endif()
  if(NOT libs OR NOT EXISTS ${root}/include/cudnn.h)
    message(FATAL_ERROR "RECON_DEC_CUDNN=ON but no cuDNN (include/cudnn.h, lib/libcudnn.so*) in '${root}': "
                        "install requirements-cudnn.txt into the venv (tools/setup.sh --cuda --cudnn does) "
                        "or set RECON_DEC_CUDNN_ROOT")
  endif()
  list(GET libs 0 lib)
  message(STATUS "recon-dec: cuDNN ${root} (${lib})")
  set(${include_var} ${root}/include PARENT_SCOPE)
  set(${library_var} ${lib} PARENT_SCOPE)
endfunction()
