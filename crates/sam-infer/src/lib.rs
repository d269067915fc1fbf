//! sam-infer: Automatic instance segmentation (AIS, AMG), prompted segmentation and tiling for SAM.
#![deny(missing_docs)]
