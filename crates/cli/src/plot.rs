//! Loss-curve chart rasterised in-house (lines, a built-in 5x7 font, axes, legend) and written as a compressed PNG
//! by the `png` crate.

use crate::atomic::write_atomically;
use std::borrow::Cow;
use std::io;
use std::path::Path;

/// One line on the chart.
pub struct Series<'a> {
    /// Legend text; letters without a glyph in the built-in font render as a hollow box.
    pub label: &'a str,
    /// (x, y) samples in drawing order; points with a non-finite coordinate are skipped.
    pub points: &'a [(f64, f64)],
    /// Line colour, RGB.
    pub color: [u8; 3],
}

const WHITE: [u8; 3] = [255, 255, 255];
const GRID_COLOR: [u8; 3] = [226, 226, 226];
const AXIS_COLOR: [u8; 3] = [70, 70, 70];
const TEXT_COLOR: [u8; 3] = [30, 30, 30];
const LEGEND_BORDER_COLOR: [u8; 3] = [170, 170, 170];
const TRAIN_COLOR: [u8; 3] = [31, 119, 180];
const VAL_COLOR: [u8; 3] = [255, 127, 14];
/// Series strokes are this many pixels wide, as the CLI's chart spec asks.
const LINE_THICKNESS: i64 = 2;
/// Fraction of the y data span added above and below, so extreme points do not sit on the frame.
const Y_PAD_FRACTION: f64 = 0.05;

const GLYPH_WIDTH: i64 = 5;
const GLYPH_HEIGHT: i64 = 7;
/// Characters of the built-in 5x7 font, in `GLYPH_ROWS` order; uppercase letters map onto lowercase ones.
const GLYPH_CHARS: &str = "0123456789.-+ _:/()abcdefghijklmnopqrstuvwxyz";
/// One glyph per entry: 7 bytes, the top row most significant; in each row bit 4 is the leftmost column.
/// g, p, q and y sit one row higher so their descenders fit in the 7 rows.
#[rustfmt::skip]
const GLYPH_ROWS: [u64; 45] = [
    0x0E11131519110E, 0x040C040404040E, 0x0E11010204081F, 0x1F02040201110E, 0x02060A121F0202, 0x1F101E0101110E,
    0x0608101E11110E, 0x1F010204080808, 0x0E11110E11110E, 0x0E11110F01020C, 0x00000000000C0C, 0x0000000E000000,
    0x0004041F040400, 0x00000000000000, 0x0000000000001F, 0x000C0C000C0C00, 0x00010204081000, 0x02040808080402,
    0x08040202020408, 0x00000E010F110F, 0x1010161911111E, 0x00000E1010110E, 0x01010D1311110F, 0x00000E111F100E,
    0x0609081C080808, 0x000F11110F010E, 0x10101619111111, 0x04000C0404040E, 0x0200060202120C, 0x10101214181412,
    0x0C04040404040E, 0x00001A15151111, 0x00001619111111, 0x00000E1111110E, 0x001E11111E1010, 0x000F11110F0101,
    0x00001619101010, 0x00000F100E011E, 0x08081C08080906, 0x0000111111130D, 0x00001111110A04, 0x0000111115150A,
    0x0000110A040A11, 0x001111110F010E, 0x00001F0204081F,
];
const _: () = assert!(GLYPH_CHARS.len() == GLYPH_ROWS.len());
/// Drawn for characters missing from the font (a hollow box), so a label never silently loses letters.
const MISSING_GLYPH: u64 = 0x1F_1111_1111_111F;

/// Row `row` (0 = top) of the glyph for `c`, as 5 bits with the leftmost column in bit 4.
fn glyph_row(c: char, row: i64) -> u8 {
    let rows = GLYPH_CHARS.find(c.to_ascii_lowercase()).map_or(MISSING_GLYPH, |index| GLYPH_ROWS[index]);
    (rows >> (8 * (GLYPH_HEIGHT - 1 - row))) as u8 & 0x1F
}

/// Width in pixels of `text` at `scale`: one blank column between glyphs, none after the last.
fn text_width(text: &str, scale: i64) -> i64 {
    (text.chars().count() as i64 * (GLYPH_WIDTH + 1) - 1).max(0) * scale
}

/// Inclusive pixel rectangle.
#[derive(Clone, Copy, Debug)]
struct Rect {
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
}

impl Rect {
    fn contains(&self, x: i64, y: i64) -> bool {
        (self.left..=self.right).contains(&x) && (self.top..=self.bottom).contains(&y)
    }
}

/// Row-major RGB pixels; writes outside the image are dropped, so callers never need to clip to the canvas.
struct Canvas {
    width: i64,
    height: i64,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Canvas { width: width as i64, height: height as i64, rgb: vec![255; width as usize * height as usize * 3] }
    }

    fn pixel(&self, x: i64, y: i64) -> Option<[u8; 3]> {
        let at =
            (self.width > x && x >= 0 && self.height > y && y >= 0).then(|| ((y * self.width + x) * 3) as usize)?;
        Some([self.rgb[at], self.rgb[at + 1], self.rgb[at + 2]])
    }

    fn put(&mut self, x: i64, y: i64, color: [u8; 3]) {
        if (0..self.width).contains(&x) && (0..self.height).contains(&y) {
            let at = ((y * self.width + x) * 3) as usize;
            self.rgb[at..at + 3].copy_from_slice(&color);
        }
    }

    fn fill(&mut self, r: Rect, color: [u8; 3]) {
        for y in r.top.max(0)..=r.bottom.min(self.height - 1) {
            for x in r.left.max(0)..=r.right.min(self.width - 1) {
                self.put(x, y, color);
            }
        }
    }

    /// Bresenham's line algorithm (integer error term, all octants), stamping a `LINE_THICKNESS`-square brush at
    /// each step so the stroke is that wide in every direction; pixels outside `clip` are dropped.
    fn line(&mut self, from: (i64, i64), to: (i64, i64), color: [u8; 3], clip: Rect) {
        let (dx, dy) = ((to.0 - from.0).abs(), -(to.1 - from.1).abs());
        let (step_x, step_y) = (if from.0 < to.0 { 1 } else { -1 }, if from.1 < to.1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (from.0, from.1, dx + dy);
        loop {
            for (bx, by) in (0..LINE_THICKNESS).flat_map(|bx| (0..LINE_THICKNESS).map(move |by| (x + bx, y + by))) {
                if clip.contains(bx, by) {
                    self.put(bx, by, color);
                }
            }
            if (x, y) == to {
                break;
            }
            let doubled = 2 * err;
            if doubled >= dy {
                err += dy;
                x += step_x;
            }
            if doubled <= dx {
                err += dx;
                y += step_y;
            }
        }
    }

    /// Draws `text` with its top-left corner at (x, y), each font pixel a `scale`x`scale` block.
    fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, color: [u8; 3]) {
        for (index, c) in text.chars().enumerate() {
            let origin = x + index as i64 * (GLYPH_WIDTH + 1) * scale;
            for row in 0..GLYPH_HEIGHT {
                let bits = glyph_row(c, row);
                for col in (0..GLYPH_WIDTH).filter(|col| bits >> (GLYPH_WIDTH - 1 - col) & 1 == 1) {
                    let (left, top) = (origin + col * scale, y + row * scale);
                    self.fill(Rect { left, top, right: left + scale - 1, bottom: top + scale - 1 }, color);
                }
            }
        }
    }
}

/// Axis ticks: every value is an integer multiple of `step`.
#[derive(Debug, PartialEq)]
struct Ticks {
    step: f64,
    values: Vec<f64>,
}

/// About `target` ticks over [lo, hi] at multiples of a "nice" step, 1, 2 or 5 × 10^k: the smallest such step at
/// least (hi - lo) / target (Heckbert, "Nice numbers for graph labels", Graphics Gems, 1990, simplified).
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    let raw_step = (hi - lo) / target.max(1) as f64;
    if !(raw_step.is_finite() && raw_step > 0.0) {
        return Ticks { step: 0.0, values: Vec::new() };
    }
    let magnitude = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|s| *s >= raw_step * (1.0 - 1e-9));
    let step = step.unwrap_or(10.0 * magnitude);
    // Tolerance of 1e-9 steps keeps end points that only miss the range by floating-point rounding.
    let (first, last) = ((lo / step - 1e-9).ceil() as i64, (hi / step + 1e-9).floor() as i64);
    Ticks { step, values: (first..=last).map(|k| k as f64 * step).collect() }
}

/// Tick label with exactly the decimals the step needs; exponent form for very large or very small steps.
fn format_tick(value: f64, step: f64) -> String {
    if value.abs() < step * 1e-6 {
        return "0".to_string();
    }
    // The 1e-9 nudge keeps exact powers of ten (log10 may return 2.9999999999999996 for 1000) on the right side.
    let step_exponent = (step.log10() + 1e-9).floor() as i32;
    let value_exponent = (value.abs().log10() + 1e-9).floor() as i32;
    if (-4..6).contains(&step_exponent) && value_exponent < 6 {
        let decimals = (-step_exponent).max(0) as usize;
        format!("{value:.decimals$}")
    } else {
        let precision = (value_exponent - step_exponent).max(0) as usize;
        format!("{value:.precision$e}")
    }
}

/// Where the plot area sits and which data ranges map onto it.
struct Frame {
    plot: Rect,
    x_range: (f64, f64),
    y_range: (f64, f64),
    x_ticks: Ticks,
    y_ticks: Ticks,
    /// Font scale for tick labels and legend; the title uses one more.
    scale: i64,
}

/// Widens an empty range (all values equal) so a flat line sits mid-axis instead of dividing by zero.
fn widen_degenerate(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        return (lo, hi);
    }
    let half = if lo != 0.0 { lo.abs() * 0.1 } else { 1.0 };
    (lo - half, hi + half)
}

impl Frame {
    fn new(width: u32, height: u32, finite: &[Vec<(f64, f64)>]) -> Frame {
        let all = || finite.iter().flatten();
        let bounds = |pick: fn(&(f64, f64)) -> f64| {
            all().map(pick).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
        };
        let ((x_lo, x_hi), (y_lo, y_hi)) = match all().next() {
            Some(_) => (bounds(|p| p.0), bounds(|p| p.1)),
            None => ((0.0, 1.0), (0.0, 1.0)),
        };
        let x_range = widen_degenerate(x_lo, x_hi);
        let pad = (y_hi - y_lo) * Y_PAD_FRACTION;
        let y_range = widen_degenerate(y_lo - pad, y_hi + pad);

        let (width, height) = (width as i64, height as i64);
        let scale = if width >= 400 && height >= 300 { 2 } else { 1 };
        let (gap, text_height) = (4 * scale, GLYPH_HEIGHT * scale);
        let top = GLYPH_HEIGHT * (scale + 1) + 4 * gap;
        // max() keeps the plot rectangle well-formed on canvases too small for the margins.
        let bottom = (height - 1 - (text_height + 4 * gap)).max(top);
        let y_ticks = nice_ticks(y_range.0, y_range.1, ((bottom - top) / (text_height * 4)).max(2) as usize);
        let label_width = y_ticks.values.iter().map(|v| text_width(&format_tick(*v, y_ticks.step), scale)).max();
        let left = label_width.unwrap_or(0) + 3 * gap;
        let right = (width - 1 - 6 * gap).max(left);
        let x_ticks =
            nice_ticks(x_range.0, x_range.1, ((right - left) / (text_width("0000", scale) + 4 * gap)).max(2) as usize);
        Frame { plot: Rect { left, top, right, bottom }, x_range, y_range, x_ticks, y_ticks, scale }
    }

    /// Linear map from data to pixel coordinates (y grows downward), bounded so a bad value cannot make the line
    /// rasteriser walk billions of pixels.
    fn to_pixel(&self, (x, y): (f64, f64)) -> (i64, i64) {
        let Rect { left, top, right, bottom } = self.plot;
        let px = left as f64 + (x - self.x_range.0) / (self.x_range.1 - self.x_range.0) * (right - left) as f64;
        let py = bottom as f64 - (y - self.y_range.0) / (self.y_range.1 - self.y_range.0) * (bottom - top) as f64;
        let bound = |v: f64, lo: i64, hi: i64| (v.round() as i64).clamp(2 * lo - hi, 2 * hi - lo);
        (bound(px, left, right), bound(py, top, bottom))
    }
}

/// Draws the series as a line chart. Sizes below 1 pixel are raised to 1.
fn draw_chart(series: &[Series], width: u32, height: u32, title: &str) -> Canvas {
    let (width, height) = (width.max(1), height.max(1));
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect())
        .collect();
    let frame = Frame::new(width, height, &finite);
    let mut canvas = Canvas::new(width, height);
    let (plot, scale) = (frame.plot, frame.scale);

    for &x in &frame.x_ticks.values {
        let (px, _) = frame.to_pixel((x, frame.y_range.0));
        canvas.fill(Rect { left: px, right: px, ..plot }, GRID_COLOR);
    }
    for &y in &frame.y_ticks.values {
        let (_, py) = frame.to_pixel((frame.x_range.0, y));
        canvas.fill(Rect { top: py, bottom: py, ..plot }, GRID_COLOR);
    }
    for (s, points) in series.iter().zip(&finite) {
        let pixels: Vec<(i64, i64)> = points.iter().map(|p| frame.to_pixel(*p)).collect();
        match pixels.as_slice() {
            [only] => {
                canvas.fill(Rect { left: only.0 - 2, top: only.1 - 2, right: only.0 + 2, bottom: only.1 + 2 }, s.color)
            }
            _ => pixels.windows(2).for_each(|pair| canvas.line(pair[0], pair[1], s.color, plot)),
        }
    }
    // A series with nothing drawable (e.g. no validation run) stays out of the legend rather than name a missing line.
    let drawn: Vec<&Series> = series.iter().zip(&finite).filter(|(_, p)| !p.is_empty()).map(|(s, _)| s).collect();
    if !drawn.is_empty() {
        draw_legend(&mut canvas, plot, &drawn, scale);
    }

    canvas.fill(Rect { right: plot.left, ..plot }, AXIS_COLOR);
    canvas.fill(Rect { top: plot.bottom, ..plot }, AXIS_COLOR);
    let text_height = GLYPH_HEIGHT * scale;
    for &y in &frame.y_ticks.values {
        let (_, py) = frame.to_pixel((frame.x_range.0, y));
        canvas.fill(Rect { left: plot.left - 2 * scale, top: py, right: plot.left, bottom: py }, AXIS_COLOR);
        let label = format_tick(y, frame.y_ticks.step);
        let label_left = plot.left - 4 * scale - text_width(&label, scale);
        canvas.text(label_left, py - text_height / 2, &label, scale, TEXT_COLOR);
    }
    let mut previous_label_end = i64::MIN;
    for &x in &frame.x_ticks.values {
        let (px, _) = frame.to_pixel((x, frame.y_range.0));
        canvas.fill(Rect { left: px, top: plot.bottom, right: px, bottom: plot.bottom + 2 * scale }, AXIS_COLOR);
        let label = format_tick(x, frame.x_ticks.step);
        let label_left = px - text_width(&label, scale) / 2;
        // Skip a label that would touch its left neighbour rather than print digits over each other.
        if label_left > previous_label_end + 2 * scale {
            canvas.text(label_left, plot.bottom + 5 * scale, &label, scale, TEXT_COLOR);
            previous_label_end = label_left + text_width(&label, scale);
        }
    }
    if finite.iter().all(Vec::is_empty) {
        let centre = ((plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2);
        let message_left = centre.0 - text_width("no data", scale) / 2;
        canvas.text(message_left, centre.1 - text_height / 2, "no data", scale, TEXT_COLOR);
    }
    let title_left = (plot.left + plot.right) / 2 - text_width(title, scale + 1) / 2;
    canvas.text(title_left, (plot.top - GLYPH_HEIGHT * (scale + 1)) / 2, title, scale + 1, TEXT_COLOR);

    canvas
}

/// Renders the series as a line chart and returns the PNG file bytes. Sizes below 1 pixel are raised to 1.
pub fn render_loss_curve(series: &[Series], width: u32, height: u32, title: &str) -> io::Result<Vec<u8>> {
    encode_png(&draw_chart(series, width, height, title))
}

/// Legend box in whichever inner corner of the plot covers the fewest already-drawn series pixels (preferring
/// top-right, where falling loss curves leave room).
fn draw_legend(canvas: &mut Canvas, plot: Rect, series: &[&Series], scale: i64) {
    let (gap, text_height, swatch) = (3 * scale, GLYPH_HEIGHT * scale, 10 * scale);
    let label_width = series.iter().map(|s| text_width(s.label, scale)).max().unwrap_or(0);
    let (box_width, box_height) = (swatch + label_width + 4 * gap, series.len() as i64 * (text_height + gap) + gap);
    let inset = 4 * scale;
    let (lefts, tops) =
        ([plot.right - inset - box_width, plot.left + inset], [plot.top + inset, plot.bottom - inset - box_height]);
    let corners = [(lefts[0], tops[0]), (lefts[1], tops[1]), (lefts[1], tops[0]), (lefts[0], tops[1])];
    let covered = |&(left, top): &(i64, i64)| {
        let (xs, ys) = (left..left + box_width, top..top + box_height);
        let is_series = |x, y| canvas.pixel(x, y).is_some_and(|c| c != WHITE && c != GRID_COLOR);
        ys.flat_map(|y| xs.clone().map(move |x| (x, y))).filter(|&(x, y)| is_series(x, y)).count()
    };
    let (left, top) = corners.into_iter().min_by_key(covered).unwrap_or(corners[0]);
    let frame = Rect { left, top, right: left + box_width - 1, bottom: top + box_height - 1 };
    canvas.fill(frame, LEGEND_BORDER_COLOR);
    canvas.fill(Rect { left: left + 1, top: top + 1, right: frame.right - 1, bottom: frame.bottom - 1 }, WHITE);
    for (row, s) in series.iter().enumerate() {
        let row_top = top + gap + row as i64 * (text_height + gap);
        let middle = row_top + text_height / 2;
        let swatch_rect =
            Rect { left: left + gap, top: middle - scale, right: left + gap + swatch, bottom: middle + scale - 1 };
        canvas.fill(swatch_rect, s.color);
        canvas.text(left + 2 * gap + swatch, row_top, s.label, scale, TEXT_COLOR);
    }
}

const LOSS_CHART_WIDTH: u32 = 800;
const LOSS_CHART_HEIGHT: u32 = 500;
const LOSS_CHART_TITLE: &str = "loss";

/// (step, loss) samples widened to the chart's coordinate type.
fn loss_points(samples: &[(u64, f32)]) -> Vec<(f64, f64)> {
    samples.iter().map(|&(step, loss)| (step as f64, loss as f64)).collect()
}

/// The end-of-training chart's two lines.
fn loss_series<'a>(train: &'a [(f64, f64)], val: &'a [(f64, f64)]) -> [Series<'a>; 2] {
    [
        Series { label: "train", points: train, color: TRAIN_COLOR },
        Series { label: "val", points: val, color: VAL_COLOR },
    ]
}

/// Writes the CLI's end-of-training chart: train and validation loss against step, 800x500, titled "loss".
/// The file appears complete or not at all: it is written under a temporary name beside `path`, then renamed.
pub fn write_loss_curve_png(path: &Path, train: &[(u64, f32)], val: &[(u64, f32)]) -> io::Result<()> {
    let (train, val) = (loss_points(train), loss_points(val));
    let png = render_loss_curve(&loss_series(&train, &val), LOSS_CHART_WIDTH, LOSS_CHART_HEIGHT, LOSS_CHART_TITLE)?;
    write_atomically(path, &png)
}

/// Palette (RGB triples) and one index byte per pixel, or None when `rgb` has more colours than a palette holds.
fn palette_indices(rgb: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut index_of = std::collections::HashMap::<[u8; 3], u8>::new();
    let mut palette = Vec::new();
    let mut indices = Vec::with_capacity(rgb.len() / 3);
    for pixel in rgb.chunks_exact(3) {
        let color = [pixel[0], pixel[1], pixel[2]];
        let index = match index_of.get(&color) {
            Some(&index) => index,
            None => {
                // An index is one byte, so the 257th colour ends the attempt (PNG palettes hold 256 entries at most).
                let index = u8::try_from(index_of.len()).ok()?;
                index_of.insert(color, index);
                palette.extend_from_slice(&color);
                index
            }
        };
        indices.push(index);
    }
    Some((palette, indices))
}

/// PNG bytes for the canvas at the crate's strongest compression. The chart is flat colours without
/// anti-aliasing, so it is normally written palette-indexed (1 byte a pixel); truecolour is the fallback.
fn encode_png(canvas: &Canvas) -> io::Result<Vec<u8>> {
    let encoding_failed = |e: png::EncodingError| io::Error::other(format!("encoding PNG: {e}"));
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, canvas.width as u32, canvas.height as u32);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::High);
    let pixels = match palette_indices(&canvas.rgb) {
        Some((palette, indices)) => {
            encoder.set_color(png::ColorType::Indexed);
            encoder.set_palette(palette);
            Cow::Owned(indices)
        }
        None => {
            encoder.set_color(png::ColorType::Rgb);
            Cow::Borrowed(canvas.rgb.as_slice())
        }
    };
    let mut writer = encoder.write_header().map_err(encoding_failed)?;
    writer.write_image_data(&pixels).map_err(encoding_failed)?;
    writer.finish().map_err(encoding_failed)?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::path::PathBuf;

    /// Bresenham steps and the 2-px brush may place the stroke one pixel off the exactly-rounded data point.
    const LINE_PIXEL_TOLERANCE: i64 = 1;

    struct Decoded {
        width: usize,
        height: usize,
        rgb: Vec<u8>,
    }

    impl Decoded {
        fn pixel(&self, x: i64, y: i64) -> [u8; 3] {
            let at = (y as usize * self.width + x as usize) * 3;
            [self.rgb[at], self.rgb[at + 1], self.rgb[at + 2]]
        }

        fn near(&self, (x, y): (i64, i64), color: [u8; 3]) -> bool {
            let span = -LINE_PIXEL_TOLERANCE..=LINE_PIXEL_TOLERANCE;
            span.clone().any(|dy| span.clone().any(|dx| self.pixel(x + dx, y + dy) == color))
        }

        fn count(&self, color: [u8; 3]) -> usize {
            self.rgb.chunks_exact(3).filter(|p| *p == color).count()
        }
    }

    /// Decodes with the `png` crate's decoder, palettes expanded to RGB, so tests see pixels whatever the format.
    fn decode_png(png: &[u8]) -> Decoded {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
        decoder.set_transformations(png::Transformations::EXPAND);
        let mut reader = decoder.read_info().unwrap();
        let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut rgb).unwrap();
        assert_eq!((frame.color_type, frame.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
        rgb.truncate(frame.buffer_size());
        Decoded { width: frame.width as usize, height: frame.height as usize, rgb }
    }

    /// Colour type as stored in the file's header, before any decoder expansion.
    fn stored_color_type(png: &[u8]) -> png::ColorType {
        png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap().info().color_type
    }

    /// Asserts the decoded image is exactly the canvas, naming the first differing pixel rather than dumping both.
    fn assert_same_pixels(decoded: &Decoded, drawn: &Canvas) {
        assert_eq!((decoded.width as i64, decoded.height as i64), (drawn.width, drawn.height), "dimensions");
        assert_eq!(decoded.rgb.len(), drawn.rgb.len(), "pixel count");
        let differing = decoded.rgb.chunks_exact(3).zip(drawn.rgb.chunks_exact(3)).position(|(got, want)| got != want);
        let at = differing.map(|i| (i % decoded.width, i / decoded.width));
        assert_eq!(at, None, "first pixel (x, y) where the decoded file differs from the drawn raster");
    }

    /// Scratch directory for one test, removed and recreated so earlier failed runs leave nothing behind.
    fn scratch_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rustspeed-plot-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn file_names(dir: &Path) -> Vec<OsString> {
        std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name()).collect()
    }

    /// Uniform in [-1, 1) from a xorshift64 state, so the noisy curves are the same on every run.
    fn next_noise(state: &mut u64) -> f32 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// (step, loss) pairs as the trainer records them.
    type LossSamples = Vec<(u64, f32)>;

    /// A 3000-step run: noisy train loss every step falling from ~10.5 towards 2, validation every 100 steps.
    fn noisy_run() -> (LossSamples, LossSamples) {
        let mut state = 0x9E37_79B9_7F4A_7C15;
        let expected = |step: u64| 2.0 + 8.5 * (-(step as f32) / 400.0).exp();
        let train = (0..3000).map(|step| (step, expected(step) + 0.25 * next_noise(&mut state))).collect();
        let val = (0..3000).step_by(100).map(|step| (step, expected(step) + 0.1 + 0.03 * next_noise(&mut state)));
        (train, val.collect())
    }

    fn render(series: &[Series], width: u32, height: u32) -> Decoded {
        decode_png(&render_loss_curve(series, width, height, "loss").unwrap())
    }

    #[test]
    fn nice_ticks_use_one_two_five_steps() {
        assert_eq!(nice_ticks(0.0, 100.0, 5), Ticks { step: 20.0, values: vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0] });
        assert_eq!(nice_ticks(-3.0, 12.0, 3), Ticks { step: 5.0, values: vec![0.0, 5.0, 10.0] });
        assert_eq!(nice_ticks(2.3, 7.9, 5), Ticks { step: 2.0, values: vec![4.0, 6.0] });
        let small = nice_ticks(0.0013, 0.0041, 4);
        assert!((small.step - 1e-3).abs() < 1e-15, "raw step 7e-4 rounds up to 1e-3, got {}", small.step);
        assert_eq!(small.values.len(), 3, "0.002, 0.003, 0.004: {:?}", small.values);
        let tenths = nice_ticks(0.0, 1.0, 5);
        assert_eq!(tenths.values.len(), 6, "0, 0.2, ..., 1.0 with the end kept despite rounding: {tenths:?}");
        assert!(nice_ticks(1.0, 1.0, 5).values.is_empty() && nice_ticks(0.0, f64::NAN, 5).values.is_empty());
    }

    #[test]
    fn tick_labels_carry_the_step_precision() {
        let cases = [(0.2 * 3.0, 0.2, "0.6"), (1500.0, 500.0, "1500"), (-2.5, 0.5, "-2.5"), (1e-17, 0.1, "0")];
        for (value, step, label) in cases.into_iter().chain([(3.0 * 1e-5, 1e-5, "3e-5"), (2.5e6, 5e5, "2.5e6")]) {
            assert_eq!(format_tick(value, step), label, "value {value} at step {step}");
        }
    }

    #[test]
    fn series_lines_land_on_their_data_and_background_stays_white() {
        let (up, down): (Vec<_>, Vec<_>) = (0..=10).map(|i| i as f64).map(|x| ((x, x), (x, 10.0 - x))).unzip();
        let (blue, orange) = ([10, 20, 200], [240, 120, 10]);
        let series =
            [Series { label: "up", points: &up, color: blue }, Series { label: "dn", points: &down, color: orange }];
        let image = render(&series, 800, 500);
        assert_eq!((image.width, image.height), (800, 500));
        let frame = Frame::new(800, 500, &[up.clone(), down.clone()]);
        assert!(frame.y_range.0 < 0.0 && frame.y_range.1 > 10.0, "y padded around the data: {:?}", frame.y_range);
        assert_eq!(frame.x_range, (0.0, 10.0), "x spans exactly min..max");
        let (Rect { left, top, right, bottom }, (y_lo, y_hi)) = (frame.plot, frame.y_range);
        let expected = |x: f64, y: f64| {
            let py = bottom as f64 - (y - y_lo) / (y_hi - y_lo) * (bottom - top) as f64;
            ((left as f64 + x / 10.0 * (right - left) as f64).round() as i64, py.round() as i64)
        };
        for x in [2.5, 3.0, 7.25] {
            assert!(image.near(expected(x, x), blue), "rising line through ({x}, {x})");
            assert!(image.near(expected(x, 10.0 - x), orange), "falling line through ({x}, {})", 10.0 - x);
        }
        let (far_x, far_y) = expected(5.0, 1.0);
        let offsets = (-3..=3).flat_map(|dy| (-3..=3).map(move |dx| (dx, dy)));
        let block: Vec<[u8; 3]> = offsets.map(|(dx, dy)| image.pixel(far_x + dx, far_y + dy)).collect();
        assert!(block.iter().all(|p| *p != blue && *p != orange), "no series colour far from the lines");
        assert!(block.iter().filter(|p| **p == WHITE).count() >= 36, "at most one grid row and column in a 7x7 block");
        for (x, y) in [(0, 0), (799, 0), (0, 499), (799, 499)] {
            assert_eq!(image.pixel(x, y), WHITE, "margin corner ({x}, {y})");
        }
        assert!(image.count(blue) > 2 * (right - left) as usize, "a 2-px rising line across the plot");
    }

    #[test]
    fn non_finite_points_are_skipped_and_neighbours_joined() {
        let (points, color) = ([(0.0, 0.0), (1.0, f64::NAN), (f64::INFINITY, 5.0), (2.0, 2.0)], [200, 0, 0]);
        let image = render(&[Series { label: "x", points: &points, color }], 400, 300);
        let frame = Frame::new(400, 300, &[vec![(0.0, 0.0), (2.0, 2.0)]]);
        assert!(image.near(frame.to_pixel((1.0, 1.0)), color), "segment from (0,0) to (2,2) drawn through (1,1)");
    }

    #[test]
    fn empty_input_still_renders_axes() {
        let (nan_only, green) = ([(f64::NAN, 1.0)], [0, 200, 0]);
        let empty = Series { label: "val", points: &[], color: green };
        for series in [vec![], vec![empty], vec![Series { label: "nan", points: &nan_only, color: green }]] {
            let image = render(&series, 300, 200);
            assert_eq!((image.width, image.height), (300, 200));
            assert!(image.count(AXIS_COLOR) > 300, "both axes drawn");
            assert!(image.count(TEXT_COLOR) > 0, "\"no data\" and tick labels drawn");
            assert_eq!(image.count(green), 0, "neither a line nor a legend entry for an empty series");
        }
        let tiny = render(&[], 0, 0);
        assert_eq!((tiny.width, tiny.height), (1, 1));
    }

    #[test]
    fn loss_curve_file_is_an_800_by_500_png_with_both_series() {
        let train: Vec<(u64, f32)> = (0..200).map(|s| (s * 10, 4.0 * (-(s as f32) / 60.0).exp() + 1.2)).collect();
        let val: Vec<(u64, f32)> = (0..=10).map(|k| (k * 199, 4.0 * (-(k as f32) / 3.0).exp() + 1.4)).collect();
        let path = std::env::temp_dir().join(format!("rustspeed-plot-test-{}.png", std::process::id()));
        write_loss_curve_png(&path, &train, &val).unwrap();
        let image = decode_png(&std::fs::read(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        assert_eq!((image.width, image.height), (800, 500));
        assert!(image.count(TRAIN_COLOR) > 500 && image.count(VAL_COLOR) > 500, "both curves drawn");
    }

    #[test]
    fn loss_curve_file_decodes_to_the_drawn_pixels_and_replaces_the_old_file() {
        let (train, val) = noisy_run();
        let (train_points, val_points) = (loss_points(&train), loss_points(&val));
        let series = loss_series(&train_points, &val_points);
        let drawn = draw_chart(&series, LOSS_CHART_WIDTH, LOSS_CHART_HEIGHT, LOSS_CHART_TITLE);
        let dir = scratch_dir("round-trip");
        let path = dir.join("loss.png");
        std::fs::write(&path, b"stale chart from an earlier run").unwrap();
        write_loss_curve_png(&path, &train, &val).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(file_names(&dir), [OsString::from("loss.png")], "the temporary file was renamed, not left over");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(stored_color_type(&png), png::ColorType::Indexed, "a flat-colour chart fits a palette");
        assert_same_pixels(&decode_png(&png), &drawn);
    }

    #[test]
    fn more_colours_than_a_palette_holds_fall_back_to_truecolour() {
        let points: Vec<[(f64, f64); 1]> = (0..300).map(|i| [(i as f64, (i * 7 % 300) as f64)]).collect();
        let colors: Vec<[u8; 3]> = (0..300u32).map(|i| [(i % 256) as u8, (i / 256) as u8, 77]).collect();
        let series: Vec<Series> =
            points.iter().zip(&colors).map(|(p, &color)| Series { label: "", points: p, color }).collect();
        let png = render_loss_curve(&series, 640, 480, "many").unwrap();
        assert_eq!(stored_color_type(&png), png::ColorType::Rgb);
        assert_same_pixels(&decode_png(&png), &draw_chart(&series, 640, 480, "many"));
    }

    #[test]
    fn three_thousand_step_chart_is_under_100_kb() {
        // Issue 17's budget for loss.png; the stored-block encoder this replaced wrote ~1.2 MB for any 800x500 chart.
        const MAX_CHART_BYTES: usize = 100_000;
        let (train, val) = noisy_run();
        let dir = scratch_dir("size");
        let path = dir.join("loss.png");
        write_loss_curve_png(&path, &train, &val).unwrap();
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(size < MAX_CHART_BYTES, "{size} bytes");
    }

    #[test]
    fn failed_write_names_the_temporary_file_and_leaves_nothing() {
        let dir = scratch_dir("failure");
        let missing_dir = dir.join("missing");
        let error = write_loss_curve_png(&missing_dir.join("loss.png"), &[(0, 1.0)], &[]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        let temporary = missing_dir.join(format!(".loss.png.{}.tmp", std::process::id()));
        assert!(error.to_string().contains(&temporary.display().to_string()), "{error}");
        assert!(file_names(&dir).is_empty(), "nothing written beside the missing directory");
        let no_name = write_loss_curve_png(Path::new("/"), &[], &[]).unwrap_err();
        assert_eq!(no_name.kind(), io::ErrorKind::InvalidInput);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
