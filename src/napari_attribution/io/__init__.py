"""Reading and writing: model bundles, images, plates, attribution results."""
