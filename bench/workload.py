"""Deterministic trading-day state for the benchmark.

A :class:`TradingDay` holds the four top-level entries a trading bot backs up:

``portfolio``
    about 50 open positions (about 10 KB): equity, cash and per-position symbol, side, size,
    entry/current price, stops and ``opened_at`` as an ISO string. A few prices move every
    step; every 10th step one position is closed and another opened.
``config``
    about 2 KB of nested settings; never changes during the day.
``history``
    ``{"trades": [...], "performance": {...}}``: starts with ``trades`` trades (about 18-19 MB
    of compact JSON at 100,000) and grows by 5 trades per step; ``performance`` is updated
    every step.
``learned``
    about 2 MB of patterns (dicts of floats and lists); 1% of them change every 20 steps.

Everything is seeded, so ``TradingDay(n, seed)`` followed by ``k`` calls of :meth:`step`
always yields the same state; the benchmark relies on that to check old backups.
All values are JSON-native (str, int, float, bool, list, dict), so the naive JSON baseline
round-trips them exactly and both implementations back up the same thing.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from typing import Any

#: Start of the trading day; the initial history lies before it.
DAY_START = datetime(2025, 12, 17, 8, 0, 0)

#: Trades appended to the history per step (one step = one pre-trade backup).
TRADES_PER_STEP = 5

#: Every this many steps a share of the learned patterns changes ...
LEARNED_EVERY = 20

#: ... namely this share of them.
LEARNED_SHARE = 0.01

#: Number of learned patterns (about 2 MB of compact JSON).
N_PATTERNS = 2700

#: Number of open positions (about 10 KB of compact JSON).
N_POSITIONS = 50

_BASES = (
    "BTC",
    "ETH",
    "SOL",
    "XRP",
    "ADA",
    "DOGE",
    "DOT",
    "AVAX",
    "LINK",
    "MATIC",
    "LTC",
    "BCH",
    "ATOM",
    "UNI",
    "XLM",
    "ETC",
    "FIL",
    "APT",
    "ARB",
    "OP",
    "NEAR",
    "ALGO",
    "AAVE",
    "SAND",
    "MANA",
    "EGLD",
    "XTZ",
    "THETA",
    "AXS",
    "EOS",
)
_QUOTES = ("USD", "EUR", "USDT")

#: 90 tradable symbols, e.g. ``"BTC/USD"``.
SYMBOLS: tuple[str, ...] = tuple(f"{b}/{q}" for b in _BASES for q in _QUOTES)

_FEATURES = (
    "rsi",
    "macd",
    "macd_signal",
    "atr",
    "volume_z",
    "trend",
    "vwap_dist",
    "bb_width",
)
_TIMEFRAMES = ("1m", "5m", "15m", "1h", "4h")


def _iso(t: datetime) -> str:
    """ISO 8601 with microseconds, as a bot would store a trade time."""
    return t.isoformat(timespec="microseconds")


class TradingDay:
    """The evolving state of a trading bot over one day of frequent pre-trade backups."""

    def __init__(self, trades: int = 100_000, seed: int = 20251217) -> None:
        """Build the start-of-day state with ``trades`` historic trades, seeded by ``seed``."""
        self._rng = random.Random(seed)
        self.steps = 0
        self._next_trade_id = 1
        self._prices: dict[str, float] = {s: self._rng.uniform(0.05, 60_000.0) for s in SYMBOLS}
        self._clock = DAY_START - timedelta(seconds=60 * trades)
        self.history: dict[str, Any] = {"trades": [], "performance": {}}
        self._wins = 0
        self._realized = 0.0
        self._by_symbol: dict[str, dict[str, Any]] = {}
        for _ in range(trades):
            self._add_trade(spacing=60.0)
        self._clock = DAY_START
        self._update_performance()
        self.portfolio: dict[str, Any] = self._make_portfolio()
        self.config: dict[str, Any] = self._make_config()
        self.learned: dict[str, Any] = self._make_learned()

    # -- public API -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The current state, as handed to ``create_backup``.

        The returned dict shares its values with this object: :meth:`step` changes them in
        place, like a live bot's state would. Callers must not mutate it.
        """
        return {
            "portfolio": self.portfolio,
            "config": self.config,
            "history": self.history,
            "learned": self.learned,
        }

    def step(self) -> None:
        """Advance to the next pre-trade backup: 5 trades, moved prices, maybe new patterns."""
        self.steps += 1
        for _ in range(TRADES_PER_STEP):
            self._add_trade(spacing=20.0)
        self._update_performance()
        self._update_portfolio()
        if self.steps % LEARNED_EVERY == 0:
            self._update_learned()

    # -- history ----------------------------------------------------------------------

    def _move_price(self, symbol: str) -> float:
        """Random-walk the price of ``symbol`` and return the new price."""
        price = self._prices[symbol] * math.exp(self._rng.gauss(0.0, 0.002))
        self._prices[symbol] = price
        return price

    def _add_trade(self, spacing: float) -> None:
        """Append one trade, ``spacing`` seconds (on average) after the previous one."""
        rng = self._rng
        self._clock += timedelta(seconds=rng.uniform(0.2, 2.0) * spacing)
        symbol = rng.choice(SYMBOLS)
        price = self._move_price(symbol)
        size = rng.uniform(0.001, 5.0) * 1_000.0 / price
        fee = round(size * price * 0.001, 8)
        pnl = rng.gauss(0.0, 25.0)
        trade = {
            "timestamp": _iso(self._clock),
            "symbol": symbol,
            "side": "buy" if rng.random() < 0.5 else "sell",
            "size": size,
            "price": price,
            "id": self._next_trade_id,
            "fee": fee,
            "pnl": pnl,
        }
        self._next_trade_id += 1
        self.history["trades"].append(trade)
        self._realized += pnl - fee
        self._wins += pnl > 0
        stats = self._by_symbol.setdefault(symbol, {"trades": 0, "pnl": 0.0, "volume": 0.0})
        stats["trades"] += 1
        stats["pnl"] += pnl - fee
        stats["volume"] += size * price

    def _update_performance(self) -> None:
        """Recompute the performance block from the running totals."""
        n = len(self.history["trades"])
        rng = self._rng
        self.history["performance"] = {
            "updated_at": _iso(self._clock),
            "n_trades": n,
            "total_return": self._realized / 100_000.0,
            "realized_pnl": self._realized,
            "win_rate": self._wins / n if n else 0.0,
            "sharpe_ratio": 1.8 + rng.gauss(0.0, 0.01),
            "sortino_ratio": 2.4 + rng.gauss(0.0, 0.01),
            "max_drawdown": -0.12 + rng.gauss(0.0, 0.001),
            "profit_factor": 1.35 + rng.gauss(0.0, 0.005),
            "by_symbol": {s: dict(v) for s, v in sorted(self._by_symbol.items())},
        }

    # -- portfolio --------------------------------------------------------------------

    def _make_position(self) -> dict[str, Any]:
        """A freshly opened position on a random symbol."""
        rng = self._rng
        symbol = rng.choice(SYMBOLS)
        price = self._prices[symbol]
        side = "long" if rng.random() < 0.6 else "short"
        sign = 1.0 if side == "long" else -1.0
        return {
            "symbol": symbol,
            "side": side,
            "size": rng.uniform(0.01, 10.0) * 1_000.0 / price,
            "entry_price": price,
            "current_price": price,
            "unrealized_pnl": 0.0,
            "stop_loss": price * (1.0 - sign * 0.02),
            "leverage": rng.choice((1, 2, 3, 5)),
            "opened_at": _iso(self._clock - timedelta(minutes=rng.uniform(1.0, 5_000.0))),
        }

    def _make_portfolio(self) -> dict[str, Any]:
        """The start-of-day portfolio."""
        positions = [self._make_position() for _ in range(N_POSITIONS)]
        portfolio: dict[str, Any] = {
            "timestamp": _iso(self._clock),
            "equity": 0.0,
            "cash": 50_000.0,
            "margin_used": 0.0,
            "positions": positions,
        }
        self._revalue(portfolio)
        return portfolio

    def _revalue(self, portfolio: dict[str, Any]) -> None:
        """Recompute P&L of each position and the portfolio's equity and margin."""
        equity = portfolio["cash"]
        margin = 0.0
        for pos in portfolio["positions"]:
            sign = 1.0 if pos["side"] == "long" else -1.0
            pos["unrealized_pnl"] = sign * (pos["current_price"] - pos["entry_price"]) * pos["size"]
            equity += pos["unrealized_pnl"]
            margin += pos["current_price"] * pos["size"] / pos["leverage"]
        portfolio["equity"] = equity
        portfolio["margin_used"] = margin

    def _update_portfolio(self) -> None:
        """Move a few prices; every 10th step close one position and open another."""
        portfolio = self.portfolio
        positions = portfolio["positions"]
        for pos in self._rng.sample(positions, 5):
            pos["current_price"] = self._move_price(pos["symbol"])
        if self.steps % 10 == 0:
            closed = positions.pop(self._rng.randrange(len(positions)))
            sign = 1.0 if closed["side"] == "long" else -1.0
            portfolio["cash"] += (
                sign * (closed["current_price"] - closed["entry_price"]) * closed["size"]
            )
            positions.append(self._make_position())
        portfolio["timestamp"] = _iso(self._clock)
        self._revalue(portfolio)

    # -- config -----------------------------------------------------------------------

    @staticmethod
    def _make_config() -> dict[str, Any]:
        """About 2 KB of nested, static configuration."""
        return {
            "strategy_config": {
                "name": "ma_crossover",
                "fast_period": 10,
                "slow_period": 30,
                "signal_smoothing": 3,
                "timeframes": ["5m", "15m", "1h"],
                "filters": {
                    "min_volume_usd": 250_000.0,
                    "max_spread_bps": 8.5,
                    "trend_filter": True,
                },
            },
            "risk_config": {
                "risk_per_trade": 0.01,
                "max_positions": 50,
                "max_leverage": 5,
                "max_daily_loss": 0.03,
                "max_drawdown": 0.15,
                "kill_switch": {
                    "enabled": True,
                    "loss_threshold": 0.05,
                    "cooldown_minutes": 60,
                },
                "position_sizing": {
                    "method": "volatility_target",
                    "target_vol": 0.2,
                    "lookback": 20,
                },
            },
            "execution": {
                "exchange": "kraken",
                "order_type": "limit",
                "slippage_bps": 5,
                "retry": {"attempts": 3, "backoff_seconds": [0.5, 1.0, 2.0]},
                "time_in_force": "GTC",
                "post_only": False,
            },
            "symbols": list(SYMBOLS),
            "notifications": {
                "telegram": {
                    "enabled": True,
                    "chat_id": "-100123456789",
                    "level": "warning",
                },
                "email": {
                    "enabled": False,
                    "to": ["ops@example.com"],
                    "level": "error",
                },
            },
            "backup": {
                "enabled": True,
                "interval_hours": 24,
                "retention_days": 30,
                "backup_path": "./backups",
                "compress": True,
            },
            "live": {
                "mode": "paper",
                "session": {
                    "start": "08:00",
                    "end": "22:00",
                    "timezone": "Europe/Berlin",
                },
                "heartbeat_seconds": 15,
            },
        }

    # -- learned patterns -------------------------------------------------------------

    def _make_pattern(self, index: int) -> dict[str, Any]:
        """One learned setup: a feature vector, weights and outcome statistics."""
        rng = self._rng
        return {
            "id": index,
            "symbol": rng.choice(SYMBOLS),
            "timeframe": rng.choice(_TIMEFRAMES),
            "features": [rng.gauss(0.0, 1.0) for _ in range(16)],
            "weights": {f: rng.uniform(-1.0, 1.0) for f in _FEATURES},
            "score": rng.random(),
            "occurrences": rng.randrange(1, 500),
            "avg_return": rng.gauss(0.002, 0.01),
            "last_seen": _iso(self._clock - timedelta(hours=rng.uniform(0.0, 2_000.0))),
        }

    def _make_learned(self) -> dict[str, Any]:
        """About 2 MB of patterns, split into successful and failed setups."""
        half = N_PATTERNS // 2
        return {
            "patterns": {
                "successful_setups": [self._make_pattern(i) for i in range(half)],
                "failed_setups": [self._make_pattern(i) for i in range(half, N_PATTERNS)],
            },
            "statistics": {
                "win_rate": 0.65,
                "avg_return": 0.02,
                "updated_at": _iso(self._clock),
            },
        }

    def _update_learned(self) -> None:
        """Re-learn 1% of the patterns (new features, weights and statistics)."""
        patterns = self.learned["patterns"]
        every = patterns["successful_setups"] + patterns["failed_setups"]
        for pattern in self._rng.sample(every, int(len(every) * LEARNED_SHARE)):
            pattern.update(self._make_pattern(pattern["id"]))
            pattern["last_seen"] = _iso(self._clock)
        stats = self.learned["statistics"]
        stats["win_rate"] += self._rng.gauss(0.0, 0.001)
        stats["avg_return"] += self._rng.gauss(0.0, 0.0001)
        stats["updated_at"] = _iso(self._clock)
