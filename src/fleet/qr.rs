//! QR codes for dashboards: the worker reports the raw QR string; the gateway renders it as a PNG
//! data URL so a dashboard can show it with a plain `<img>`.

use anyhow::Context;
use base64::Engine;
use qrcode::{Color, QrCode};

/// Pixels per QR module.
const SCALE: usize = 6;
/// Light modules around the code, as the QR spec asks.
const QUIET_ZONE: usize = 4;

/// `data:image/png;base64,…` of the QR code for `text`.
pub fn png_data_url(text: &str) -> anyhow::Result<String> {
    let code = QrCode::new(text.as_bytes()).context("encoding QR")?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (index, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (index % modules + QUIET_ZONE, index / modules + QUIET_ZONE);
        for y in my * SCALE..(my + 1) * SCALE {
            pixels[y * side + mx * SCALE..y * side + (mx + 1) * SCALE].fill(0);
        }
    }
    let mut png = Vec::with_capacity(side * side / 4);
    {
        let mut encoder = png::Encoder::new(&mut png, side as u32, side as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().context("PNG header")?;
        writer.write_image_data(&pixels).context("PNG data")?;
    }
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_a_png_data_url() {
        let url = super::png_data_url("2@abc,def,ghi").unwrap_or_default();
        assert!(
            url.starts_with("data:image/png;base64,iVBORw0KGgo"),
            "{url}"
        );
    }
}
