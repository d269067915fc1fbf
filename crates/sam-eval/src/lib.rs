//! sam-eval: Instance-segmentation metrics (Hungarian IoU matching, mSA) and evaluation reports.
#![deny(missing_docs)]
