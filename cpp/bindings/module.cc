// The private extension module fluororeg._core: a thin binding over the C++ core. The
// public, typed API (degrees, millimetres, validation) lives in python/fluororeg.
#include "bindings.h"

NB_MODULE(_core, m) {
  m.doc() = "fluororeg C++ core (private; use the fluororeg package)";
  fluororeg::bindings::BindRender(m);
  fluororeg::bindings::BindRegistration(m);
  fluororeg::bindings::BindCalibration(m);
  fluororeg::bindings::BindRefine(m);
}
