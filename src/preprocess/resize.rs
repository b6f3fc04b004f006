//! Resizing to the model input size. (Being written: Pillow-exact bilinear, torchvision antialias.)

use image::RgbImage;

/// Pillow-exact `Image.resize((width, height), Image.BILINEAR)` on 8-bit RGB.
pub fn resize_bilinear_pillow(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    image::imageops::resize(src, width, height, image::imageops::FilterType::Triangle)
}

/// torchvision `Resize((height, width), antialias=True)` on `[0, 1]` floats; returns RGB planes
/// (CHW, 3 × height × width).
pub fn resize_torchvision_antialias(src: &RgbImage, width: u32, height: u32) -> Vec<f32> {
    let resized = resize_bilinear_pillow(src, width, height);
    let mut out = vec![0.0; 3 * (width * height) as usize];
    super::write_chw(
        &resized,
        super::ChannelOrder::Rgb,
        &super::Normalisation::None,
        &mut out,
    );
    out
}
