//! `base^e mod n` for RSA signature checks, written for 32-bit wasm.
//!
//! A fresh RS256 token's cost is almost all this exponentiation (for e = 65537, 16 squarings
//! and a multiplication of 2048-bit numbers, plus the moves into and out of Montgomery form).
//! `crypto-bigint` works with 32-bit limbs in wasm, splits and propagates every partial
//! product's carry, and has no dedicated squaring at that limb size. Here numbers are held in
//! 27-bit limbs, so a 64-bit accumulator can sum a whole column of 54-bit partial products
//! (fewer than 1,024 of them) without any carry: a multiply and an add per product. Each
//! Montgomery product is computed column by column (product scanning), and a squaring computes
//! each off-diagonal product once and doubles the sum. Inputs are public (key, signature), so the code runs in variable time.
//! Measured in docs/benchmark.md.

use std::cmp::Ordering;

/// Bits per limb. 2·27 = 54-bit products leave 10 bits of headroom in a 64-bit column sum.
const LIMB_BITS: u32 = 27;
const LIMB_MASK: u32 = (1 << LIMB_BITS) - 1;
/// A column sums at most 2·len + 1 products (the operands' and the reduction's) and a carry
/// below 2³⁷: below 2⁶⁴ while that is fewer than 1,023 products, i.e. len up to 510. 8192 bits
/// is 304 limbs, and the largest RSA key the `rsa` crate accepts.
const MAX_MODULUS_BITS: usize = 8192;

/// An odd modulus prepared for Montgomery arithmetic with `R = 2^(27·len)`.
#[derive(Clone, Debug)]
pub struct Modulus {
    /// Little-endian 27-bit limbs; the top limb is not zero.
    limbs: Vec<u32>,
    /// `-n⁻¹ mod 2²⁷`.
    neg_inverse: u32,
    /// `R² mod n`: a Montgomery product with it moves a value into Montgomery form.
    r_squared: Vec<u32>,
    /// The modulus length in bytes.
    length: usize,
}

/// `Σ xs[i] · ys[len - 1 - i]`: the products whose indices sum to one column.
#[inline(always)]
fn crossed(xs: &[u32], ys: &[u32]) -> u64 {
    xs.iter().zip(ys.iter().rev()).map(|(x, y)| u64::from(*x) * u64::from(*y)).sum()
}

/// `slice[start..end]`, or nothing when the range is empty or out of bounds.
#[inline(always)]
fn part(slice: &[u32], start: usize, end: usize) -> &[u32] {
    slice.get(start..end).unwrap_or_default()
}

/// Limb `k` as a column sum (0 past the end).
#[inline(always)]
fn limb(limbs: &[u32], k: usize) -> u64 {
    limbs.get(k).map_or(0, |limb| u64::from(*limb))
}

impl Modulus {
    /// From big-endian bytes; `None` unless the modulus is odd, above 1 and at most 8192 bits.
    pub fn new(big_endian: &[u8]) -> Option<Modulus> {
        let length = big_endian.iter().skip_while(|byte| **byte == 0).count();
        if length * 8 > MAX_MODULUS_BITS {
            return None;
        }
        let limbs = limbs_from_be(big_endian);
        let low = *limbs.first()?;
        if low & 1 == 0 || (limbs.len() == 1 && low == 1) {
            return None;
        }
        // Newton's iteration doubles the correct low bits of an inverse each round; any odd x
        // is its own inverse modulo 8 (3 bits), so four rounds give 48 ≥ 27.
        let inverse =
            (0..4).fold(low, |inverse: u32, _| inverse.wrapping_mul(2u32.wrapping_sub(low.wrapping_mul(inverse))));
        let mut modulus =
            Modulus { neg_inverse: inverse.wrapping_neg() & LIMB_MASK, r_squared: Vec::new(), limbs, length };
        modulus.r_squared = modulus.compute_r_squared();
        Some(modulus)
    }

    /// The modulus length in bytes.
    pub fn length(&self) -> usize {
        self.length
    }

    /// `base^exponent mod n` as big-endian bytes of the modulus's length; `None` when the base
    /// is not below the modulus.
    pub fn power(&self, base: &[u8], exponent: u64) -> Option<Vec<u8>> {
        let len = self.limbs.len();
        if base.iter().skip_while(|byte| **byte == 0).count() > self.length {
            return None;
        }
        let mut base = limbs_from_be(base);
        base.resize(len, 0);
        if compare(&base, &self.limbs) != Ordering::Less {
            return None;
        }
        let mut base_form = vec![0; len];
        self.multiply(&mut base_form, &base, &self.r_squared);
        let power = self.power_in_form(&base_form, exponent);
        // A Montgomery product with 1 leaves Montgomery form.
        let mut plain = base_form;
        self.product(&mut plain, |k| limb(&power, k));
        Some(be_from_limbs(&plain, self.length))
    }

    /// Square and multiply, left to right, over the exponent's bits; base and result in
    /// Montgomery form.
    fn power_in_form(&self, base: &[u32], exponent: u64) -> Vec<u32> {
        let len = self.limbs.len();
        if exponent == 0 {
            // 1 in Montgomery form: R mod n, i.e. R² reduced once.
            let mut one = vec![0; len];
            self.product(&mut one, |k| limb(&self.r_squared, k));
            return one;
        }
        let mut result = base.to_vec();
        let mut scratch = vec![0; len];
        let bits = u64::BITS - exponent.leading_zeros();
        for bit in (0..bits.saturating_sub(1)).rev() {
            self.square(&mut scratch, &result);
            std::mem::swap(&mut result, &mut scratch);
            if (exponent >> bit) & 1 == 1 {
                self.multiply(&mut scratch, &result, base);
                std::mem::swap(&mut result, &mut scratch);
            }
        }
        result
    }

    /// `out = a·b·R⁻¹ mod n`.
    fn multiply(&self, out: &mut [u32], a: &[u32], b: &[u32]) {
        let len = self.limbs.len();
        self.product(out, |k| {
            // Pairs (i, k - i) with both indices below len.
            let start = (k + 1).saturating_sub(len);
            let end = (k + 1).min(len);
            crossed(part(a, start, end), part(b, k + 1 - end, k + 1 - start))
        });
    }

    /// `out = a²·R⁻¹ mod n`, each product `a_i·a_j` with `i ≠ j` computed once and doubled.
    fn square(&self, out: &mut [u32], a: &[u32]) {
        let len = self.limbs.len();
        self.product(out, |k| {
            // Pairs (i, k - i) with i < k - i, both below len.
            let start = (k + 1).saturating_sub(len);
            let end = k.div_ceil(2);
            let twice = 2 * crossed(part(a, start, end), part(a, k + 1 - end, k + 1 - start));
            if k % 2 == 0 {
                twice + limb(a, k / 2) * limb(a, k / 2)
            } else {
                twice
            }
        });
    }

    /// Montgomery reduction interleaved with the product whose column sums `column(k)` gives
    /// (k from 0 to 2·len - 2): `out = product·R⁻¹ mod n`, for any product below `n·R`.
    ///
    /// Column k < len also adds `m_i·n_(k-i)` for the reduction multipliers `m_i` chosen so far,
    /// then chooses `m_k` to clear its low 27 bits; columns from len on give the result's limbs.
    /// `out` keeps the multipliers until each is last read, then receives the result.
    #[inline(always)]
    fn product(&self, out: &mut [u32], column: impl Fn(usize) -> u64) {
        let n = &self.limbs;
        let len = n.len();
        let mut carry = 0u64;
        for k in 0..len {
            let sum = column(k) + carry + crossed(part(out, 0, k), part(n, 1, k + 1));
            let multiplier = (sum as u32).wrapping_mul(self.neg_inverse) & LIMB_MASK;
            if let Some(slot) = out.get_mut(k) {
                *slot = multiplier;
            }
            carry = (sum + u64::from(multiplier) * limb(n, 0)) >> LIMB_BITS;
        }
        for k in len..2 * len {
            let start = k + 1 - len;
            let sum = column(k) + carry + crossed(part(out, start, len), part(n, start, len));
            if let Some(slot) = out.get_mut(k - len) {
                *slot = sum as u32 & LIMB_MASK;
            }
            carry = sum >> LIMB_BITS;
        }
        // The result is below 2n: one subtraction at most, when it reached R or n.
        if carry != 0 || compare(out, n) != Ordering::Less {
            subtract(out, n);
        }
    }

    /// `R² mod n`: R mod n by doubling the modulus's top power of two, then `2^(27·len)` in
    /// Montgomery form, which is `2^(27·len)·R = R²`.
    fn compute_r_squared(&self) -> Vec<u32> {
        let len = self.limbs.len();
        let top_limb = self.limbs.last().copied().unwrap_or(1);
        let top_bit = u32::BITS - 1 - top_limb.leading_zeros();
        let r_bits = LIMB_BITS as usize * len;
        let mut value = vec![0u32; len];
        if let Some(limb) = value.last_mut() {
            *limb = 1 << top_bit;
        }
        // 2^(bits - 1) < n; doubled up to 2^(27·len) = R, then once more: 2 in Montgomery form.
        let bits = LIMB_BITS as usize * (len - 1) + top_bit as usize + 1;
        for _ in bits - 1..=r_bits {
            self.double(&mut value);
        }
        self.power_in_form(&value, r_bits as u64)
    }

    /// `value = 2·value mod n`, for `value < n`.
    fn double(&self, value: &mut [u32]) {
        let mut carry = 0;
        for limb in value.iter_mut() {
            let next = *limb >> (LIMB_BITS - 1);
            *limb = ((*limb << 1) | carry) & LIMB_MASK;
            carry = next;
        }
        if carry != 0 || compare(value, &self.limbs) != Ordering::Less {
            subtract(value, &self.limbs);
        }
    }
}

/// Little-endian 27-bit limbs of big-endian bytes, without zero limbs at the top.
fn limbs_from_be(big_endian: &[u8]) -> Vec<u32> {
    let significant = big_endian.get(big_endian.iter().take_while(|byte| **byte == 0).count()..).unwrap_or_default();
    let mut limbs = Vec::with_capacity((significant.len() * 8).div_ceil(LIMB_BITS as usize));
    let (mut pending, mut pending_bits) = (0u64, 0);
    for byte in significant.iter().rev() {
        pending |= u64::from(*byte) << pending_bits;
        pending_bits += 8;
        if pending_bits >= LIMB_BITS {
            limbs.push(pending as u32 & LIMB_MASK);
            pending >>= LIMB_BITS;
            pending_bits -= LIMB_BITS;
        }
    }
    if pending != 0 {
        limbs.push(pending as u32);
    }
    limbs
}

/// The low `length` bytes of the value, big-endian.
fn be_from_limbs(limbs: &[u32], length: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(length + 4);
    let (mut pending, mut pending_bits) = (0u64, 0);
    for limb in limbs {
        pending |= u64::from(*limb) << pending_bits;
        pending_bits += LIMB_BITS;
        while pending_bits >= 8 {
            bytes.push(pending as u8);
            pending >>= 8;
            pending_bits -= 8;
        }
    }
    bytes.push(pending as u8);
    bytes.resize(length, 0);
    bytes.reverse();
    bytes
}

/// Compares two values of the same number of limbs.
fn compare(a: &[u32], b: &[u32]) -> Ordering {
    a.iter().rev().cmp(b.iter().rev())
}

/// `a -= b` modulo `2^(27·len)`.
fn subtract(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0;
    for (x, y) in a.iter_mut().zip(b) {
        let difference = x.wrapping_sub(*y).wrapping_sub(borrow);
        borrow = difference >> 31;
        *x = difference & LIMB_MASK;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
    use crypto_bigint::{BoxedUint, Odd};

    /// A deterministic byte source (xorshift), so failures can be rerun.
    struct Bytes(u64);

    impl Bytes {
        fn take(&mut self, count: usize) -> Vec<u8> {
            (0..count)
                .map(|_| {
                    self.0 ^= self.0 << 13;
                    self.0 ^= self.0 >> 7;
                    self.0 ^= self.0 << 17;
                    self.0 as u8
                })
                .collect()
        }
    }

    /// The same power with crypto-bigint's constant-time exponentiation.
    fn expected(modulus: &[u8], base: &[u8], exponent: u64) -> Vec<u8> {
        let n = BoxedUint::from_be_slice_vartime(modulus);
        let precision = n.bits_precision();
        let params = BoxedMontyParams::new(Odd::new(n).unwrap());
        let base = BoxedUint::from_be_slice(base, precision).unwrap();
        let exponent = BoxedUint::from_be_slice_vartime(&exponent.to_be_bytes());
        let bytes = BoxedMontyForm::new(base, &params).pow(&exponent).retrieve().to_be_bytes();
        let length = modulus.iter().skip_while(|byte| **byte == 0).count();
        bytes[bytes.len() - length..].to_vec()
    }

    fn check(modulus: &[u8], base: &[u8], exponent: u64) {
        let prepared = Modulus::new(modulus).unwrap();
        assert_eq!(
            prepared.power(base, exponent).unwrap(),
            expected(modulus, base, exponent),
            "n = {modulus:02x?}, base = {base:02x?}, e = {exponent}"
        );
    }

    /// A base below the modulus: random bytes with the top byte below the modulus's.
    fn base_below(bytes: &mut Bytes, modulus: &[u8]) -> Vec<u8> {
        let mut base = bytes.take(modulus.len());
        base[0] %= modulus[0];
        base
    }

    #[test]
    fn agrees_with_crypto_bigint_on_random_moduli_of_many_sizes() {
        let mut bytes = Bytes(0x9e37_79b9_7f4a_7c15);
        for length in [1, 2, 3, 4, 5, 7, 8, 9, 16, 33, 64, 127, 128, 129, 255, 256, 257, 384, 512] {
            for _ in 0..3 {
                let mut modulus = bytes.take(length);
                modulus[0] |= 0x80 >> (modulus[0] % 8);
                modulus[length - 1] |= 1;
                if modulus == [1] {
                    continue;
                }
                for exponent in [1, 2, 3, 17, 65537, 0xffff_ffff_ffff_ffff] {
                    check(&modulus, &base_below(&mut bytes, &modulus), exponent);
                }
            }
        }
    }

    #[test]
    fn agrees_where_carries_are_largest() {
        let mut bytes = Bytes(7);
        // All limbs at their maximum: every column's sums are as large as they get.
        for length in [4, 64, 256, 512, MAX_MODULUS_BITS / 8] {
            let modulus = vec![0xff; length];
            let mut below = modulus.clone();
            below[length - 1] = 0xfe;
            for base in [below, base_below(&mut bytes, &modulus), vec![0; length], {
                let mut one = vec![0; length];
                one[length - 1] = 1;
                one
            }] {
                check(&modulus, &base, 65537);
                check(&modulus, &base, 3);
            }
        }
        // The smallest modulus of its length: results close to R.
        let mut modulus = vec![0; 256];
        modulus[0] = 0x80;
        modulus[255] = 1;
        for _ in 0..4 {
            check(&modulus, &base_below(&mut bytes, &modulus), 65537);
        }
    }

    #[test]
    fn leading_zero_bytes_and_exponent_zero() {
        check(&[0, 0, 0x0b, 0x01], &[0, 0x05], 65537);
        assert_eq!(Modulus::new(&[0, 0x0b, 0x01]).unwrap().power(&[7], 0).unwrap(), vec![0, 1]);
        assert_eq!(Modulus::new(&[0x0d]).unwrap().power(&[0], 5).unwrap(), vec![0]);
    }

    #[test]
    fn refuses_even_or_trivial_moduli_and_bases_not_below_them() {
        assert!(Modulus::new(&[0x10, 0x00]).is_none());
        assert!(Modulus::new(&[0, 1]).is_none());
        assert!(Modulus::new(&[]).is_none());
        let mut longest = vec![0xff; MAX_MODULUS_BITS / 8];
        assert!(Modulus::new(&longest).is_some());
        longest.push(0xff);
        assert!(Modulus::new(&longest).is_none(), "over 8192 bits");
        let modulus = Modulus::new(&[0x0b, 0x01]).unwrap();
        assert!(modulus.power(&[0x0b, 0x01], 3).is_none(), "the modulus itself");
        assert!(modulus.power(&[0xff, 0xff], 3).is_none());
        assert!(modulus.power(&[1, 0, 0], 3).is_none(), "longer than the modulus");
        assert_eq!(modulus.power(&[0, 0, 0x0b, 0x00], 1).unwrap(), vec![0x0b, 0x00], "leading zeros");
    }
}
