//! sam-model: Segment Anything (SAM, MobileSAM, micro_sam UNETR decoder) in tch, with checkpoint import/export.
#![deny(missing_docs)]
