// import modtracker.libtorch; -- no declarations of its own: the LibTorch
// backend is plain C++ (include <modtracker/torch.hpp>; no module unit may
// include a LibTorch header). It re-exports the modules that the LibTorch
// headers import, so that a project linking the installed
// modtracker::libtorch gets them built: CMake builds an installed package's
// modules for the targets a project links, and for what those import.
export module modtracker.libtorch;
export import modtracker;
export import modtracker.backend;
