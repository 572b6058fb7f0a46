// import modtracker.libtorch_tools; -- no declarations of its own (see
// modtracker.libtorch): the modules that the LibTorch tools' headers import,
// re-exported so that linking the installed modtracker::torch builds them.
export module modtracker.libtorch_tools;
export import modtracker.libtorch;
export import modtracker.stats;
