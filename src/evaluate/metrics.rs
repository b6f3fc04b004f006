//! Detection metrics: AUROC, precision/recall/F1 at a threshold, ROC curves.
