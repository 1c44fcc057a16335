//! Drawing a scene: flat shapes on a pale page, like a picture book.

use super::scene::{Scene, Shape, Size, Thing};

const PAGE: [u8; 3] = [238, 236, 228];

/// Whether the point (dx, dy), in units of the thing's radius from its centre, is inside.
fn inside(shape: Shape, dx: f32, dy: f32) -> bool {
    match shape {
        Shape::Circle => dx * dx + dy * dy <= 1.0,
        Shape::Square => dx.abs() <= 0.85 && dy.abs() <= 0.85,
        Shape::Diamond => dx.abs() + dy.abs() <= 1.0,
        // Pointing up: the half-width grows from the apex (dy = -1) to the base (dy = 0.8).
        Shape::Triangle => (-1.0..=0.8).contains(&dy) && dx.abs() <= (dy + 1.0) / 1.8 * 0.95,
    }
}

/// (centre x, centre y, radius) in pixels.
pub fn placement(thing: &Thing, size: u32) -> (f32, f32, f32) {
    let cell = size as f32 / 3.0;
    let radius = match thing.size {
        Size::Small => 0.24 * cell,
        Size::Big => 0.44 * cell,
    };
    (
        (thing.column as f32 + 0.5) * cell,
        (thing.row as f32 + 0.5) * cell,
        radius,
    )
}

/// The scene as `size` x `size` RGB pixels, row-major.
pub fn render(scene: &Scene, size: u32) -> Vec<u8> {
    let mut pixels = PAGE.repeat((size * size) as usize);
    for thing in &scene.things {
        let (cx, cy, r) = placement(thing, size);
        for y in 0..size {
            for x in 0..size {
                let (dx, dy) = ((x as f32 + 0.5 - cx) / r, (y as f32 + 0.5 - cy) / r);
                if inside(thing.shape, dx, dy) {
                    let at = ((y * size + x) * 3) as usize;
                    pixels[at..at + 3].copy_from_slice(&thing.colour.rgb());
                }
            }
        }
    }
    pixels
}
